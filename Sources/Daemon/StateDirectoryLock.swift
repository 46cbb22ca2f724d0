// StateDirectoryLock: one daemon per state directory. An exclusive flock on `<state>/lock`, held for the daemon's
// life, with the holder's pid written in the file so a second daemon can say who has it.

import Foundation

public final class StateDirectoryLock: Sendable {
    private let fd: Int32
    public let path: String

    /// Takes the lock or throws a `SpoolError` naming the pid that holds it. The lock goes with the process (also
    /// on kill -9); `deinit` releases it.
    public init(stateDirectory: URL) throws {
        path = stateDirectory.appendingPathComponent("lock").path
        try? FileManager.default.createDirectory(at: stateDirectory, withIntermediateDirectories: true,
                                                 attributes: [.posixPermissions: 0o750])
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw SpoolError(path: path, reason: "cannot open the state directory's lock file: \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw SpoolError(path: path, reason: "the lock file is not a regular file")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            let holder = Self.readPID(fd)
            close(fd)
            if e == EWOULDBLOCK {
                throw SpoolError(path: stateDirectory.path, reason: "the state directory is in use by another sdd serve"
                    + (holder.map { " (pid \($0))" } ?? "") + "; stop it first or give this one another --state-dir")
            }
            throw SpoolError(path: path, reason: "cannot lock the state directory: \(String(cString: strerror(e)))")
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        _ = fsync(fd)
        self.fd = fd
    }

    deinit { close(fd) }

    /// The pid written in the lock file, if it holds one.
    private static func readPID(_ fd: Int32) -> Int32? {
        var buf = [UInt8](repeating: 0, count: 32)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
