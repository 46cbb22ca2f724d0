// JobTable: every job the daemon knows, by id, with the queued ones kept in run order (QueueOrder) as they are
// queued, started, canceled or requeued, so a job's queue position is a lookup instead of a sort of the table.

import Foundation
import SDDAPI

/// One job as the queue holds it: its record (what is on disk) and what only lives in memory.
struct JobEntry {
    var record: JobRecord
    var cancelRequested = false
    /// It was running when the daemon stopped: it goes first, to resume from its checkpoint.
    var resumeFirst = false
    /// Its outcome could not be written (disk full): it waits, queued as the disk says it is, until there is
    /// room again (checked at `retryAfter` at the earliest), then runs again.
    var deferred = false
    var retryAfter = Date.distantPast
    /// The latest preview of a running job (PNG bytes and the step it shows); kept in memory only.
    var preview: (png: [UInt8], step: Int, total: Int)?

    init(record: JobRecord) { self.record = record }

    var id: String { record.job.id }
    var isQueued: Bool { record.job.state == .queued }
    var orderKey: QueueOrder.Key {
        QueueOrder.Key(resumeFirst: resumeFirst, priority: record.job.settings.priority ?? 0, seq: record.seq, id: id)
    }
}

/// Queued job ids in the order they will run: resumed first, then higher priority, then arrival (seq), kept sorted
/// on every insert and removal (binary search; no full sort).
struct QueueOrder {
    struct Key: Comparable, Hashable {
        var resumeFirst: Bool
        var priority: Int
        var seq: UInt64
        /// Last tie-break, so two records with the same seq (a hand-edited spool) still have one order.
        var id: String

        static func < (a: Key, b: Key) -> Bool {
            if a.resumeFirst != b.resumeFirst { return a.resumeFirst }
            if a.priority != b.priority { return a.priority > b.priority }
            if a.seq != b.seq { return a.seq < b.seq }
            return a.id < b.id
        }
    }

    /// Sorted ascending: `keys[0]` runs next.
    private var keys: [Key] = []
    private var keyOf: [String: Key] = [:]

    var count: Int { keys.count }
    var isEmpty: Bool { keys.isEmpty }
    /// The ids, next to run first.
    var ids: [String] { keys.map(\.id) }

    /// Adds `key.id`, or moves it when its key changed.
    mutating func insert(_ key: Key) {
        if let old = keyOf[key.id] {
            if old == key { return }
            remove(key.id)
        }
        keys.insert(key, at: lowerBound(key))
        keyOf[key.id] = key
    }

    mutating func remove(_ id: String) {
        guard let key = keyOf.removeValue(forKey: id) else { return }
        keys.remove(at: lowerBound(key))
    }

    /// 1 for the job that runs next; nil when `id` is not queued.
    func position(of id: String) -> Int? {
        keyOf[id].map { lowerBound($0) + 1 }
    }

    /// The first index whose key is not before `key`.
    private func lowerBound(_ key: Key) -> Int {
        var lo = 0, hi = keys.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if keys[mid] < key { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }
}

/// The jobs by id and the run order of the queued ones; every change goes through `set`/`update`/`remove`, which
/// keep the order in step with the entries' states.
struct JobTable {
    private(set) var entries: [String: JobEntry] = [:]
    private(set) var order = QueueOrder()

    subscript(id: String) -> JobEntry? { entries[id] }
    var values: Dictionary<String, JobEntry>.Values { entries.values }
    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }
    var queuedCount: Int { order.count }

    func contains(_ id: String) -> Bool { entries[id] != nil }

    mutating func set(_ entry: JobEntry) {
        entries[entry.id] = entry
        sync(entry)
    }

    /// Changes the entry `id` (nothing when there is none).
    mutating func update(_ id: String, _ change: (inout JobEntry) -> Void) {
        guard var e = entries[id] else { return }
        change(&e)
        entries[id] = e
        sync(e)
    }

    mutating func remove(_ id: String) {
        entries[id] = nil
        order.remove(id)
    }

    /// The job as clients see it: with its queue position when queued.
    func view(_ e: JobEntry) -> Job {
        var job = e.record.job
        job.position = job.state == .queued ? order.position(of: job.id) : nil
        return job
    }

    private mutating func sync(_ e: JobEntry) {
        if e.isQueued { order.insert(e.orderKey) } else { order.remove(e.id) }
    }
}
