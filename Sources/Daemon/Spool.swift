// Spool: the daemon's state directory — one JSON file per job, generation checkpoints, result PNGs — written
// so a crash at any instant leaves either the old or the new file (temp file, fsync, rename, fsync dir).
// Every file is opened relative to its folder's descriptor with O_NOFOLLOW: a symbolic link planted in the
// state directory is never followed, and a folder that is a link or someone else's is refused at start.

import Foundation
import Pipeline
import SDDAPI

/// A job as it is kept on disk: the API view plus its arrival number (queue order survives restarts).
public struct JobRecord: Codable, Sendable, Equatable {
    /// Arrival order, increasing across restarts.
    public var seq: UInt64
    public var job: Job
    /// Runs of this job that began and have not ended (written before each run starts, taken back when a run
    /// pauses cleanly for a shutdown): what is left after a restart is the number of times a run of it ended
    /// with the process. nil in records written before this was kept (none).
    public var unfinishedRuns: Int?

    public init(seq: UInt64, job: Job, unfinishedRuns: Int? = nil) {
        self.seq = seq
        self.job = job
        self.unfinishedRuns = unfinishedRuns
    }
}

/// Errors writing or reading the state directory, naming the path.
public struct SpoolError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "\(path): \(reason)" }
}

/// A test seam: asked before each durable write with the file's name (e.g. "0123456789abcdef.json"); an errno
/// it returns makes that write fail as the kernel would (ENOSPC for a full disk), leaving the old file as it was.
public struct SpoolWriteFaults: Sendable {
    public let errorFor: @Sendable (String) -> Int32?
    public init(_ errorFor: @escaping @Sendable (String) -> Int32?) { self.errorFor = errorFor }
}

/// Layout: `<root>/jobs/<id>.json`, `<root>/checkpoints/<id>.json`, `<root>/images/<id>-<n>.png`.
public final class Spool: Sendable {
    public let root: URL
    let jobs: URL
    let checkpoints: URL
    let images: URL
    private let rootFD: Int32
    private let jobsFD: Int32
    private let checkpointsFD: Int32
    private let imagesFD: Int32
    private let faults: SpoolWriteFaults?

    /// Creates the folders (0750) if needed, refuses folders that are symbolic links or belong to another user,
    /// and removes the temp files a crash of this daemon left behind (only names it makes itself).
    public init(root: URL, faults: SpoolWriteFaults? = nil) throws {
        self.root = root
        self.faults = faults
        jobs = root.appendingPathComponent("jobs")
        checkpoints = root.appendingPathComponent("checkpoints")
        images = root.appendingPathComponent("images")
        do {
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o750])
        } catch {
            throw SpoolError(path: root.path, reason: "cannot create the state directory (\(error.localizedDescription))")
        }
        // The state directory itself may be a link the administrator made; what is inside it may not.
        rootFD = open(root.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else {
            throw SpoolError(path: root.path, reason: "cannot open the state directory: \(String(cString: strerror(errno)))")
        }
        var opened: [Int32] = []
        do {
            for name in ["jobs", "checkpoints", "images"] { opened.append(try Self.openSubdirectory(rootFD, name, root)) }
        } catch {
            for fd in opened { close(fd) }
            close(rootFD)
            throw error
        }
        jobsFD = opened[0]
        checkpointsFD = opened[1]
        imagesFD = opened[2]
        for fd in [jobsFD, checkpointsFD, imagesFD] {
            for name in Self.names(in: fd) where Self.isOwnTemporaryFile(name) { unlinkat(fd, name, 0) }
        }
    }

    deinit {
        for fd in [jobsFD, checkpointsFD, imagesFD, rootFD] { close(fd) }
    }

    // MARK: jobs

    /// Every readable job record; unreadable ones are renamed to `<id>.json.corrupt` and reported.
    public func loadJobs() -> (records: [JobRecord], problems: [String]) {
        var records: [JobRecord] = []
        var problems: [String] = []
        for name in Self.names(in: jobsFD).sorted() where name.hasSuffix(".json") {
            let path = jobs.appendingPathComponent(name).path
            let id = String(name.dropLast(5))
            do {
                let data = try Self.read(jobsFD, name, path: path)
                let record = try JSONDecoder().decode(JobRecord.self, from: data)
                guard JobID.isValid(id), record.job.id == id else { throw SpoolError(path: path, reason: "id does not match the file name") }
                records.append(record)
            } catch {
                problems.append("\(path): unreadable job record, moved aside (\(error))")
                renameat(jobsFD, name, jobsFD, name + ".corrupt")
            }
        }
        return (records, problems)
    }

    /// Writes the record durably (returns only once it is on disk).
    public func save(_ record: JobRecord) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try write(Array(try encoder.encode(record)), jobsFD, "\(record.job.id).json", folder: jobs, mode: 0o640)
    }

    /// Removes a job's record, checkpoint and images; returns the bytes freed.
    @discardableResult
    public func remove(_ id: String, images count: Int) -> Int {
        var freed = 0
        var files = [(jobsFD, "\(id).json"), (checkpointsFD, "\(id).json")]
        files += (0..<count).map { (imagesFD, "\(id)-\($0).png") }
        for (fd, name) in files {
            freed += Self.fileSize(fd, name)
            unlinkat(fd, name, 0)
        }
        fsync(jobsFD)
        return freed
    }

    // MARK: checkpoints and images

    public func saveCheckpoint(_ id: String, _ data: Data) throws {
        try write(Array(data), checkpointsFD, "\(id).json", folder: checkpoints, mode: 0o640)
    }
    public func loadCheckpoint(_ id: String) -> Data? {
        try? Self.read(checkpointsFD, "\(id).json", path: checkpoints.appendingPathComponent("\(id).json").path)
    }
    public func removeCheckpoint(_ id: String) { unlinkat(checkpointsFD, "\(id).json", 0) }

    /// Where image `n` (0-based) of a job is (for reading by path in tests and tools; the daemon reads through
    /// `readImage`).
    public func imageURL(_ id: String, _ n: Int) -> URL { images.appendingPathComponent("\(id)-\(n).png") }

    /// Writes image `n` of a job (PNG bytes) durably.
    public func writeImage(_ id: String, _ n: Int, _ bytes: [UInt8]) throws {
        try write(bytes, imagesFD, "\(id)-\(n).png", folder: images, mode: 0o640)
    }

    /// Image `n` of a job, or nil if it is not there (removed by retention) or not a regular file.
    public func readImage(_ id: String, _ n: Int) -> Data? {
        try? Self.read(imagesFD, "\(id)-\(n).png", path: imageURL(id, n).path)
    }

    /// Image `n` of a job opened for reading (O_NOFOLLOW, relative to the images folder), with its size, for
    /// streaming it; the caller closes `fd`. nil if it is not there or not a regular file.
    public func openImage(_ id: String, _ n: Int) -> (fd: Int32, size: Int)? {
        guard let (fd, size) = try? Self.openRegular(imagesFD, "\(id)-\(n).png", path: imageURL(id, n).path) else {
            return nil
        }
        return (fd, size)
    }

    /// Bytes a job takes on disk (record + images + checkpoint).
    public func bytesUsed(_ id: String, images count: Int) -> Int {
        Self.fileSize(jobsFD, "\(id).json") + Self.fileSize(checkpointsFD, "\(id).json")
            + (0..<count).reduce(0) { $0 + Self.fileSize(imagesFD, "\(id)-\($1).png") }
    }

    /// Bytes free for the daemon on the state directory's file system (statvfs f_bavail), nil if unknown.
    public func freeBytes() -> Int? {
        var st = statvfs()
        guard fstatvfs(rootFD, &st) == 0 else { return nil }
        return Int(st.f_bavail) * Int(st.f_frsize)
    }

    // MARK: file operations relative to the folders' descriptors

    /// Writes `bytes` to a temp file in the folder, fsyncs it, renames it over `name` and fsyncs the folder. On
    /// failure the temp file is removed and `name` is untouched.
    private func write(_ bytes: [UInt8], _ dirFD: Int32, _ name: String, folder: URL, mode: mode_t) throws {
        let path = folder.appendingPathComponent(name).path
        if let e = faults?.errorFor(name) {
            throw SpoolError(path: path, reason: "write failed: \(String(cString: strerror(e)))")
        }
        do {
            try DurableFile.replace(bytes, named: name, inDirectory: dirFD, folderPath: folder.path, mode: mode)
        } catch {
            throw SpoolError(path: path, reason: error.reason)
        }
    }

    /// The whole of regular file `name` in the folder; a link or anything but a regular file is an error.
    private static func read(_ dirFD: Int32, _ name: String, path: String) throws -> Data {
        let (fd, size) = try openRegular(dirFD, name, path: path)
        defer { close(fd) }
        var data = Data(count: size)
        var done = 0
        while done < data.count {
            let n = data.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            done += n
        }
        return data.prefix(done)
    }

    /// Opens regular file `name` of the folder for reading without following a link; returns it and its size.
    private static func openRegular(_ dirFD: Int32, _ name: String, path: String) throws -> (Int32, Int) {
        let fd = openat(dirFD, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw SpoolError(path: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw SpoolError(path: path, reason: "is not a regular file")
        }
        return (fd, Int(st.st_size))
    }

    static func fileSize(_ dirFD: Int32, _ name: String) -> Int {
        var st = stat()
        return fstatat(dirFD, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? Int(st.st_size) : 0
    }

    /// Opens (creating it 0750 if absent) the folder `name` of the state directory; refuses a symbolic link,
    /// anything but a folder, and a folder that belongs to another user than the daemon's.
    private static func openSubdirectory(_ rootFD: Int32, _ name: String, _ root: URL) throws -> Int32 {
        let path = root.appendingPathComponent(name).path
        var st = stat()
        if fstatat(rootFD, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
            guard errno == ENOENT, mkdirat(rootFD, name, 0o750) == 0 || errno == EEXIST,
                  fstatat(rootFD, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
                throw SpoolError(path: path, reason: "cannot create the folder: \(String(cString: strerror(errno)))")
            }
        }
        switch st.st_mode & S_IFMT {
        case S_IFDIR: break
        case S_IFLNK:
            throw SpoolError(path: path, reason: "is a symbolic link; the state directory's folders must be real folders "
                + "(remove the link and restart)")
        default: throw SpoolError(path: path, reason: "is not a folder")
        }
        guard st.st_uid == geteuid() else {
            throw SpoolError(path: path, reason: "belongs to uid \(st.st_uid), not to the daemon's uid \(geteuid())")
        }
        let fd = openat(rootFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError(path: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
        return fd
    }

    /// The entries of an open folder (not . and ..).
    static func names(in dirFD: Int32) -> [String] {
        let copy = dup(dirFD)
        guard copy >= 0, let dir = fdopendir(copy) else { return [] }
        defer { closedir(dir) }
        rewinddir(dir)
        var out: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }

    /// Whether `name` is a temp file this daemon writes: `.<file>.<pid>.<random>.tmp`, where `<file>` is a job
    /// record or checkpoint (`<id>.json`) or an image (`<id>-<n>.png`). Nothing else is ever deleted as a temp file.
    public static func isOwnTemporaryFile(_ name: String) -> Bool {
        guard name.hasPrefix("."), name.hasSuffix(".tmp") else { return false }
        var parts = name.dropFirst().dropLast(4).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, let random = parts.popLast(), let pid = parts.popLast(),
              !random.isEmpty, random.count <= 10, random.allSatisfy(\.isASCIIDigit),
              !pid.isEmpty, pid.count <= 10, pid.allSatisfy(\.isASCIIDigit) else { return false }
        let stem = parts[0], ext = parts[1]
        switch ext {
        case "json": return JobID.isValid(String(stem))
        case "png":
            guard let dash = stem.lastIndex(of: "-") else { return false }
            let n = stem[stem.index(after: dash)...]
            return JobID.isValid(String(stem[..<dash])) && !n.isEmpty && n.count <= 3 && n.allSatisfy(\.isASCIIDigit)
        default: return false
        }
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
