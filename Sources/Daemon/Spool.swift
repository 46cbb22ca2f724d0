// Spool: the daemon's state directory — one JSON file per job, generation checkpoints, result PNGs — written
// so a crash at any instant leaves either the old or the new file (temp file, fsync, rename, fsync dir).

import Foundation
import SDDAPI

/// A job as it is kept on disk: the API view plus its arrival number (queue order survives restarts).
public struct JobRecord: Codable, Sendable, Equatable {
    /// Arrival order, increasing across restarts.
    public var seq: UInt64
    public var job: Job
}

/// Errors writing or reading the state directory, naming the path.
public struct SpoolError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

/// Layout: `<root>/jobs/<id>.json`, `<root>/checkpoints/<id>.json`, `<root>/images/<id>-<n>.png`.
public final class Spool: Sendable {
    public let root: URL
    let jobs: URL
    let checkpoints: URL
    let images: URL

    /// Creates the folders (0750) if needed and removes temp files a crash left behind.
    public init(root: URL) throws {
        self.root = root
        jobs = root.appendingPathComponent("jobs")
        checkpoints = root.appendingPathComponent("checkpoints")
        images = root.appendingPathComponent("images")
        for dir in [root, jobs, checkpoints, images] {
            do {
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o750])
            } catch {
                throw SpoolError(path: dir.path, reason: "cannot create the state directory (\(error.localizedDescription))")
            }
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [] where name.hasSuffix(".tmp") {
                unlink(dir.appendingPathComponent(name).path)
            }
        }
    }

    // MARK: jobs

    /// Every readable job record; unreadable ones are renamed to `<id>.json.corrupt` and reported.
    public func loadJobs() -> (records: [JobRecord], problems: [String]) {
        var records: [JobRecord] = []
        var problems: [String] = []
        let names = (try? FileManager.default.contentsOfDirectory(atPath: jobs.path)) ?? []
        for name in names.sorted() where name.hasSuffix(".json") {
            let url = jobs.appendingPathComponent(name)
            let id = String(name.dropLast(5))
            do {
                let record = try JSONDecoder().decode(JobRecord.self, from: Data(contentsOf: url))
                guard JobID.isValid(id), record.job.id == id else { throw SpoolError(path: url.path, reason: "id does not match the file name") }
                records.append(record)
            } catch {
                problems.append("\(url.path): unreadable job record, moved aside (\(error))")
                rename(url.path, url.path + ".corrupt")
            }
        }
        return (records, problems)
    }

    /// Writes the record durably (returns only once it is on disk).
    public func save(_ record: JobRecord) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try AtomicFile.write(try encoder.encode(record), to: jobs.appendingPathComponent("\(record.job.id).json"))
    }

    /// Removes a job's record, checkpoint and images; returns the bytes freed.
    @discardableResult
    public func remove(_ id: String, images count: Int) -> Int {
        var freed = 0
        var paths = [jobs.appendingPathComponent("\(id).json"), checkpointURL(id)]
        paths += (0..<count).map { imageURL(id, $0) }
        for url in paths {
            freed += Self.fileSize(url)
            unlink(url.path)
        }
        AtomicFile.syncDirectory(jobs)
        return freed
    }

    // MARK: checkpoints and images

    func checkpointURL(_ id: String) -> URL { checkpoints.appendingPathComponent("\(id).json") }

    public func saveCheckpoint(_ id: String, _ data: Data) throws { try AtomicFile.write(data, to: checkpointURL(id)) }
    public func loadCheckpoint(_ id: String) -> Data? { try? Data(contentsOf: checkpointURL(id)) }
    public func removeCheckpoint(_ id: String) { unlink(checkpointURL(id).path) }

    /// Where image `n` (0-based) of a job is.
    public func imageURL(_ id: String, _ n: Int) -> URL { images.appendingPathComponent("\(id)-\(n).png") }

    /// Bytes a job takes on disk (record + images + checkpoint).
    public func bytesUsed(_ id: String, images count: Int) -> Int {
        Self.fileSize(jobs.appendingPathComponent("\(id).json")) + Self.fileSize(checkpointURL(id))
            + (0..<count).reduce(0) { $0 + Self.fileSize(imageURL(id, $1)) }
    }

    static func fileSize(_ url: URL) -> Int {
        var st = stat()
        return stat(url.path, &st) == 0 ? Int(st.st_size) : 0
    }
}

/// Crash-safe file replacement: temp file in the same folder, fsync, rename over, fsync the folder.
public enum AtomicFile {
    public static func write(_ data: Data, to url: URL) throws {
        let dir = url.deletingLastPathComponent()
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).\(UInt64.random(in: 0...UInt64.max)).tmp")
        func fail(_ what: String, _ err: Int32) -> SpoolError {
            SpoolError(path: url.path, reason: "\(what): \(String(cString: strerror(err)))")
        }
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw fail("cannot create a temporary file", errno) }
        var ok = false
        defer { if !ok { unlink(tmp.path) } }
        let writeError: Int32? = data.withUnsafeBytes { raw in
            var written = 0
            while written < raw.count {
                guard let base = raw.baseAddress else { return nil }
                let n = Glibc.write(fd, base + written, raw.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                written += n
            }
            return nil
        }
        if let e = writeError {
            close(fd)
            throw fail("write failed", e)
        }
        if fsync(fd) != 0 {
            let e = errno
            close(fd)
            throw fail("fsync failed", e)
        }
        close(fd)
        guard rename(tmp.path, url.path) == 0 else { throw fail("rename failed", errno) }
        ok = true
        syncDirectory(dir)
    }

    /// fsync a folder so a rename or unlink in it is durable (best effort).
    public static func syncDirectory(_ dir: URL) {
        let fd = open(dir.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }
}
