// Spool: the daemon's state directory — one JSON file per job, generation checkpoints, result PNGs — written
// so a crash at any instant leaves either the old or the new file (temp file, fsync, rename, fsync dir).

import Foundation
import Pipeline
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
        try OutputFiles.writeAtomically(try encoder.encode(record), to: jobs.appendingPathComponent("\(record.job.id).json"),
                                        mode: 0o640)
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
        OutputFiles.syncDirectory(jobs)
        return freed
    }

    // MARK: checkpoints and images

    func checkpointURL(_ id: String) -> URL { checkpoints.appendingPathComponent("\(id).json") }

    public func saveCheckpoint(_ id: String, _ data: Data) throws {
        try OutputFiles.writeAtomically(data, to: checkpointURL(id), mode: 0o640)
    }
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
