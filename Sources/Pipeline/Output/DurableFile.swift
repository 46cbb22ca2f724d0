// DurableFile: replacing a file so a crash at any instant leaves either the old or the new one (temp file, write
// all, fsync, close, rename, fsync the folder). The one copy of that sequence: image/latent outputs and the daemon's spool use it.

import Foundation
#if canImport(Glibc)
    import Glibc
#endif

/// Why a durable replacement failed: the step, with the system's reason (e.g. "fsync failed: No space left on device").
public struct DurableWriteError: Error, CustomStringConvertible, Sendable, Equatable {
    public let reason: String
    public var description: String { reason }
}

public enum DurableFile {
    /// Writes `bytes` to a new temp file in the folder open as `dirFD`, fsyncs and closes it, renames it over `name`
    /// and fsyncs the folder (best effort). All names are relative to `dirFD` (openat/renameat), so a caller that
    /// holds its folder open is immune to the path being swapped under it; the temp file is created with O_EXCL and
    /// O_NOFOLLOW, so a planted link is never followed. On failure the temp file is removed and `name` is untouched.
    /// `mode` is filtered by the umask; `folderPath` only names the folder in errors.
    public static func replace(
        _ bytes: [UInt8], named name: String, inDirectory dirFD: Int32, folderPath: String, mode: mode_t
    ) throws(DurableWriteError) {
        func fail(_ what: String, _ err: Int32) -> DurableWriteError {
            DurableWriteError(reason: "\(what): \(String(cString: strerror(err)))")
        }
        let tmp = ".\(name).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        let fd = openat(dirFD, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw fail("cannot create a temporary file in \(folderPath)", errno) }
        var ok = false
        defer { if !ok { unlinkat(dirFD, tmp, 0) } }
        if let e = writeAll(bytes, to: fd) {
            close(fd)
            throw fail("write failed", e)
        }
        if fsync(fd) != 0 {
            let e = errno
            close(fd)
            throw fail("fsync failed", e)
        }
        if close(fd) != 0 { throw fail("close failed", errno) }
        if renameat(dirFD, tmp, dirFD, name) != 0 { throw fail("cannot rename the temporary file into place", errno) }
        ok = true
        _ = fsync(dirFD)
    }

    /// Writes every byte to `fd`, retrying short writes and EINTR; the errno of a failed write, or nil.
    public static func writeAll(_ bytes: [UInt8], to fd: Int32) -> Int32? {
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return nil }
            var written = 0
            while written < raw.count {
                let n = Glibc.write(fd, base + written, raw.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                written += n
            }
            return nil
        }
    }
}

/// Writing result files so a reader never sees a partial one (images, latents).
public enum OutputFiles {
    /// Writes `data` to a temp file in `url`'s folder, fsyncs it, renames it over `url`, and fsyncs
    /// the folder (best effort). On failure the temp file is removed and `url` is untouched.
    public static func writeAtomically(_ data: Data, to url: URL, mode: mode_t = 0o666) throws {
        try writeAtomically([UInt8](data), to: url, mode: mode)
    }

    /// As above, for bytes; `mode` is filtered by the umask.
    public static func writeAtomically(_ bytes: [UInt8], to url: URL, mode: mode_t = 0o666) throws {
        let dir = url.deletingLastPathComponent()
        let dirFD = open(dir.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFD >= 0 else {
            throw OutputFileError(
                path: url.path, "cannot create a temporary file in \(dir.path): \(String(cString: strerror(errno)))")
        }
        defer { close(dirFD) }
        do {
            try DurableFile.replace(
                bytes, named: url.lastPathComponent, inDirectory: dirFD, folderPath: dir.path, mode: mode)
        } catch {
            throw OutputFileError(path: url.path, error.reason)
        }
    }
}
