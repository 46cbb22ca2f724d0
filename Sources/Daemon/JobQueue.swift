// JobQueue: the daemon's jobs as clients and the worker use them — submit, view, cancel, subscribe, take the next
// job, report progress, complete. Thread-safe: one lock (a condition the worker waits on) over the job table
// (JobTable), the subscribers (JobSubscribers) and the counters (QueueStatus); each state change is written to the
// spool. Start-up recovery is JobRecovery, the retention sweep's choice JobRetention.

import Foundation
import Logging
import SDDAPI
import Synchronization

public final class JobQueue: @unchecked Sendable {
    /// What the worker gets when it asks for work.
    public enum Next {
        case job(JobRecord)
        case timedOut
        case stopping
    }

    public typealias Subscriber = @Sendable (JobEvent) -> Void

    // Everything below up to `spool` is guarded by `cond` (a condition, as the worker waits on it in `next`).
    private let cond = NSCondition()
    private var table = JobTable()
    private var subscribers = JobSubscribers()
    private var counters = QueueCounters()
    private var reservedIDs: Set<String> = []
    /// "owner:request_id" of submissions being saved, so a concurrent retry waits for them instead of duplicating.
    private var reservedRequests: Set<String> = []
    private var nextSeq: UInt64 = 1
    private var accepting = true
    private var stopping = false
    private var runningID: String?
    /// Serializes spool writes so the last state written wins.
    private let writeLock = Mutex(())

    public let spool: Spool
    /// Most jobs waiting at once; more submissions get 429.
    public let maxQueued: Int
    /// A job whose runs ended with the process this many times is failed with `crashed_repeatedly` at start.
    public let maxCrashes: Int
    /// A job whose outcome could not be written runs again only once the state directory has this much free.
    public let minFreeBytes: Int
    /// Seconds between checks for room to retry such a job.
    static let deferredRetryInterval = 5.0
    let logger: Logger
    /// Told the systemd STATUS= line whenever it changes (called outside the lock).
    private let statusListener: (@Sendable (String) -> Void)?

    /// Loads every job in the spool: queued ones stay queued; one that was running is queued first to resume,
    /// unless its runs have ended with the process `maxCrashes` times: that one is failed (`crashed_repeatedly`).
    public init(spool: Spool, maxQueued: Int, maxCrashes: Int = 2, minFreeBytes: Int = 0, logger: Logger,
                statusListener: (@Sendable (String) -> Void)? = nil) {
        self.spool = spool
        self.maxQueued = maxQueued
        self.maxCrashes = max(1, maxCrashes)
        self.minFreeBytes = minFreeBytes
        self.logger = logger
        self.statusListener = statusListener
        let loaded = spool.loadJobs()
        for problem in loaded.problems { logger.error("\(problem)") }
        let rebuilt = JobRecovery.rebuild(loaded.records, maxCrashes: self.maxCrashes, now: Self.now(), logger: logger)
        table = rebuilt.table
        nextSeq = rebuilt.nextSeq
        for record in rebuilt.crashed {
            do { try spool.save(record) } catch {
                logger.error("cannot save job state", metadata: ["job": "\(record.job.id)", "error": "\(error)"])
            }
        }
        if !table.isEmpty {
            logger.info("spool loaded", metadata: ["jobs": "\(table.count)", "queued": "\(table.queuedCount)"])
        }
    }

    public static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: clients

    /// Queues a resolved request for `owner`; returns once the job is on disk.
    /// Throws 503 `shutting_down`, 429 `queue_full`, or 500 `internal` if the spool cannot be written.
    public func submit(_ request: JobRequest, owner: UInt32) throws(APIError) -> Job {
        try submit(request, as: .uid(owner))
    }

    /// Queues a resolved request for `owner` (a uid or a token name); returns once the job is on disk.
    public func submit(_ request: JobRequest, as owner: JobOwner) throws(APIError) -> Job {
        try submit(request, as: owner, isSameRequest: { $0 == request }).job
    }

    /// Queues a resolved request for `owner`, or, when the request carries a `request_id` this owner already used,
    /// returns the job that id made (`created` false) — also while that first submission is still being saved,
    /// and after restarts (the id is kept in the job's settings on disk). `isSameRequest` says whether the
    /// client's request matches the stored settings; a reused id with different settings is 409 `conflict`.
    public func submit(_ request: JobRequest, as owner: JobOwner, isSameRequest: (JobRequest) -> Bool)
        throws(APIError) -> (job: Job, created: Bool) {
        cond.lock()
        let requestKey = request.requestId.map { "\(owner):\($0)" }
        if let requestKey {
            // A submission with this id in flight (being saved) ends one way or the other; then look.
            while reservedRequests.contains(requestKey) { cond.wait() }
            // The owner's own jobs only (root's too: seeing every job is not owning it).
            let recorded = owner.recorded
            let same = table.values.first {
                $0.record.job.owner == recorded.uid && $0.record.job.ownerName == recorded.name
                    && $0.record.job.settings.requestId == request.requestId
            }
            if let e = same {
                let job = table.view(e)
                cond.unlock()
                guard isSameRequest(job.settings) else {
                    throw APIError(.conflict, "request_id \"\(request.requestId ?? "")\" was already used for job "
                        + "\(job.id), whose settings differ; use a new request_id for a new job")
                }
                logger.info("retried submission", metadata: ["job": "\(job.id)", "owner": "\(owner)"])
                return (job, false)
            }
        }
        guard accepting else {
            counters.rejectedTotal += 1
            cond.unlock()
            throw APIError(.shuttingDown, "the daemon is shutting down; submit again once it is back")
        }
        let queued = table.queuedCount + reservedIDs.count
        guard queued < maxQueued else {
            counters.rejectedTotal += 1
            cond.unlock()
            throw APIError(.queueFull, "the queue is full (\(maxQueued) jobs waiting); try again later")
        }
        var id = Self.newID()
        while table.contains(id) || reservedIDs.contains(id) { id = Self.newID() }
        reservedIDs.insert(id)
        if let requestKey { reservedRequests.insert(requestKey) }
        let seq = nextSeq
        nextSeq += 1
        cond.unlock()

        let record = JobRecord(seq: seq, job: Job(id: id, state: .queued, owner: owner.recorded.uid, createdAt: Self.now(),
                                                  settings: request, ownerName: owner.recorded.name))
        do {
            try spool.save(record)
        } catch {
            cond.lock()
            reservedIDs.remove(id)
            if let requestKey { reservedRequests.remove(requestKey) }
            cond.broadcast()
            cond.unlock()
            logger.error("cannot save a job", metadata: ["error": "\(error)"])
            throw APIError(.internalError, "cannot save the job: \(error)")
        }
        cond.lock()
        reservedIDs.remove(id)
        if let requestKey { reservedRequests.remove(requestKey) }
        let entry = JobEntry(record: record)
        table.set(entry)
        counters.submittedTotal += 1
        let job = table.view(entry)
        subscribers.emit(JobEvent(event: .queued, job: id, time: Self.now(), position: job.position))
        cond.broadcast()
        let status = statusLineLocked()
        cond.unlock()
        statusListener?(status)
        logger.info("job queued", metadata: ["job": "\(id)", "owner": "\(owner)", "priority": "\(request.priority ?? 0)"])
        return (job, true)
    }

    /// The job if `uid` may see it (its owner, or root).
    public func job(_ id: String, uid: UInt32) -> Job? { job(id, owner: .uid(uid)) }

    /// The job if `owner` may see it.
    public func job(_ id: String, owner: JobOwner) -> Job? {
        cond.lock()
        defer { cond.unlock() }
        guard let e = table[id], Self.visible(e, to: owner) else { return nil }
        return table.view(e)
    }

    /// The jobs `uid` may see, oldest first.
    public func list(uid: UInt32) -> [Job] { list(owner: .uid(uid)) }

    /// The jobs `owner` may see, oldest first.
    public func list(owner: JobOwner) -> [Job] {
        cond.lock()
        defer { cond.unlock() }
        return table.values.filter { Self.visible($0, to: owner) }.sorted { $0.record.seq < $1.record.seq }
            .map { table.view($0) }
    }

    /// Cancels a queued job at once (state canceled) or asks the worker to stop a running one between steps
    /// (state stays running until it does). 404 if not visible, 409 if already final.
    public func cancel(_ id: String, uid: UInt32) throws(APIError) -> Job { try cancel(id, owner: .uid(uid)) }

    /// `cancel(_:uid:)` for any owner.
    public func cancel(_ id: String, owner: JobOwner) throws(APIError) -> Job {
        cond.lock()
        guard var e = table[id], Self.visible(e, to: owner) else {
            cond.unlock()
            throw APIError(.notFound, "no job \(id)")
        }
        switch e.record.job.state {
        case .finished, .failed, .canceled:
            cond.unlock()
            throw APIError(.conflict, "job \(id) is already \(e.record.job.state.rawValue)")
        case .running:
            e.cancelRequested = true
            table.set(e)
            let job = table.view(e)
            cond.unlock()
            logger.info("cancel requested", metadata: ["job": "\(id)"])
            return job
        case .queued:
            e.record.job.state = .canceled
            e.record.job.finishedAt = Self.now()
            e.record.job.error = APIError(.canceled, "canceled while queued")
            table.set(e)
            subscribers.emit(JobEvent(event: .canceled, job: id, time: Self.now()))
            let job = table.view(e)
            let status = statusLineLocked()
            cond.unlock()
            persist(id)
            statusListener?(status)
            logger.info("job canceled", metadata: ["job": "\(id)"])
            return job
        }
    }

    /// Registers `subscriber` for the job's events. Returns the events that describe its state now (to send
    /// first) and a token for `unsubscribe` (nil when the job is already final: nothing more will come).
    /// nil if `uid` may not see the job. The subscriber is called with the queue locked: it must not block
    /// or call back into the queue.
    public func subscribe(_ id: String, uid: UInt32, _ subscriber: @escaping Subscriber)
        -> (initial: [JobEvent], token: UInt64?)? {
        subscribe(id, owner: .uid(uid), subscriber)
    }

    /// `subscribe(_:uid:_:)` for any owner.
    public func subscribe(_ id: String, owner: JobOwner, _ subscriber: @escaping Subscriber)
        -> (initial: [JobEvent], token: UInt64?)? {
        cond.lock()
        defer { cond.unlock() }
        guard let e = table[id], Self.visible(e, to: owner) else { return nil }
        let job = table.view(e)
        let initial = JobEvents.current(job, preview: e.preview, now: Self.now())
        if job.state.isFinal { return (initial, nil) }
        return (initial, subscribers.add(id, subscriber))
    }

    public func unsubscribe(_ id: String, token: UInt64) {
        cond.lock()
        subscribers.remove(id, token: token)
        cond.unlock()
    }

    /// Stops taking new jobs (submissions get 503); queued ones stay on disk for the next start.
    public func stopAccepting() {
        cond.lock()
        accepting = false
        cond.unlock()
    }

    public var isAccepting: Bool {
        cond.lock()
        defer { cond.unlock() }
        return accepting
    }

    // MARK: the worker

    /// Blocks until a job is queued (returns it, now running), `deadline` passes, or `stopWorker` is called.
    public func next(until deadline: Date?) -> Next {
        cond.lock()
        while true {
            if stopping {
                cond.unlock()
                return .stopping
            }
            let order = table.order.ids
            let waitingForRoom = order.contains { table[$0]?.deferred == true }
            let roomToRetry = waitingForRoom ? roomForResults() : false
            if let id = order.first(where: { table[$0].map { !$0.deferred || (roomToRetry && Date() >= $0.retryAfter) } ?? false }),
               var e = table[id] {
                e.record.job.state = .running
                e.record.job.startedAt = Self.now()
                e.resumeFirst = false
                e.deferred = false
                // Counted on disk before the run begins: if the run takes the process down, the next start knows.
                e.record.unfinishedRuns = (e.record.unfinishedRuns ?? 0) + 1
                table.set(e)
                runningID = id
                // Others moved up one place.
                for other in table.order.ids { emitPosition(other) }
                let record = e.record
                cond.unlock()
                persist(id)
                return .job(record)
            }
            // Jobs waiting for room on disk are looked at again every few seconds.
            let recheck = Date().addingTimeInterval(Self.deferredRetryInterval)
            if waitingForRoom, deadline.map({ recheck < $0 }) ?? true {
                _ = cond.wait(until: recheck)
                continue
            }
            if let d = deadline {
                if Date() >= d || !cond.wait(until: d) {
                    if Date() >= d {
                        cond.unlock()
                        return .timedOut
                    }
                }
            } else {
                cond.wait()
            }
        }
    }

    /// The worker began (or resumed) generating: `step` of `total` done already.
    public func markStarted(_ id: String, step: Int, total: Int) {
        cond.lock()
        table.update(id) { $0.record.job.progress = JobProgress(step: step, total: total) }
        subscribers.emit(JobEvent(event: .started, job: id, time: Self.now(), step: step, total: total))
        let status = statusLineLocked()
        cond.unlock()
        statusListener?(status)
    }

    /// One denoising step done, which took `seconds`; `eta` seconds are left.
    public func reportStep(_ id: String, step: Int, total: Int, seconds: Double, eta: Double?) {
        cond.lock()
        table.update(id) { $0.record.job.progress = JobProgress(step: step, total: total, etaSeconds: eta) }
        counters.steps.add(seconds)
        subscribers.emit(JobEvent(event: .step, job: id, time: Self.now(), step: step, total: total, etaSeconds: eta))
        let status = statusLineLocked()
        cond.unlock()
        statusListener?(status)
    }

    /// The running job drew a preview of its latents after `step`: kept as the job's latest and sent to subscribers.
    public func reportPreview(_ id: String, png: [UInt8], step: Int, total: Int) {
        cond.lock()
        defer { cond.unlock() }
        guard table.contains(id) else { return }
        table.update(id) { $0.preview = (png, step, total) }
        subscribers.emit(JobEvents.preview(id, png, step: step, total: total, time: Self.now()))
    }

    /// The latest preview of job `id` (PNG bytes, step, total), if `owner` may see the job and one was drawn.
    public func preview(_ id: String, owner: JobOwner) -> (png: [UInt8], step: Int, total: Int)? {
        cond.lock()
        defer { cond.unlock() }
        guard let e = table[id], Self.visible(e, to: owner) else { return nil }
        return e.preview
    }

    public func isCancelRequested(_ id: String) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        return table[id]?.cancelRequested ?? false
    }

    /// The running job reached a final state (its images, if any, are already on disk). Returns false when that
    /// state could not be written: then nobody is told it ended; the job is queued again, as it is on disk, and runs
    /// again once the state directory has room (a restart would run it again too).
    @discardableResult
    /// `time`: when it ended (seconds since 1970), now unless a caller (a test ordering completions) says.
    public func complete(_ id: String, state: JobState, images: Int = 0, error: APIError? = nil,
                         at time: Double = JobQueue.now()) -> Bool {
        cond.lock()
        guard var e = table[id] else {
            cond.unlock()
            return true
        }
        let before = e
        e.record.job.state = state
        e.record.job.finishedAt = time
        e.record.job.images = images
        e.record.job.error = error
        if state == .finished, let p = e.record.job.progress {
            e.record.job.progress = JobProgress(step: p.total, total: p.total, etaSeconds: 0)
        }
        table.set(e)
        if runningID == id { runningID = nil }
        cond.unlock()
        // On disk before anyone hears it is done.
        let saved = persist(id)
        cond.lock()
        if saved {
            if let e = table[id] { subscribers.emit(JobEvents.final(table.view(e))) }
        } else if table.contains(id) {
            var back = before
            back.record.job.state = .queued
            back.resumeFirst = true
            back.deferred = true
            back.retryAfter = Date().addingTimeInterval(Self.deferredRetryInterval)
            table.set(back)
            subscribers.emit(JobEvent(event: .queued, job: id, time: Self.now(), position: table.view(back).position))
            logger.error("the job's outcome could not be written; it stays queued and runs again when there is room",
                         metadata: ["job": "\(id)", "outcome": "\(state.rawValue)"])
        }
        let status = statusLineLocked()
        cond.unlock()
        statusListener?(status)
        return saved
    }

    /// The worker is stopping with this job unfinished: it stays "running" on disk and resumes after a restart.
    /// This run ended cleanly, so it is taken back from the job's count of runs that ended with the process.
    public func release(_ id: String) {
        cond.lock()
        if runningID == id { runningID = nil }
        table.update(id) { $0.record.unfinishedRuns = max(0, ($0.record.unfinishedRuns ?? 1) - 1) }
        cond.unlock()
        persist(id)
    }

    /// Wakes the worker and makes `next` return `.stopping`.
    public func stopWorker() {
        cond.lock()
        stopping = true
        cond.broadcast()
        cond.unlock()
    }

    // MARK: housekeeping and reporting

    /// Removes final jobs older than `maxAge` seconds, then the oldest final jobs while the spool holds more than
    /// `maxBytes`. Returns the ids removed.
    @discardableResult
    public func sweep(maxAge: Double?, maxBytes: Int?, now: Double = JobQueue.now()) -> [String] {
        cond.lock()
        let final = table.values.filter { $0.record.job.state.isFinal }.map(\.record.job)
        cond.unlock()
        let doomed = JobRetention.plan(final: final, maxAge: maxAge, maxBytes: maxBytes, now: now) {
            spool.bytesUsed($0.id, images: $0.images)
        }
        guard !doomed.isEmpty else { return [] }
        cond.lock()
        for (id, _) in doomed {
            table.remove(id)
            subscribers.removeAll(id)
        }
        cond.unlock()
        for (id, images) in doomed { spool.remove(id, images: images) }
        logger.info("retention removed jobs", metadata: ["count": "\(doomed.count)"])
        return doomed.map(\.id)
    }

    public func snapshot() -> QueueSnapshot {
        cond.lock()
        defer { cond.unlock() }
        return counters.snapshot(table, running: runningID)
    }

    /// "idle", or "job 3f2a: step 12/50, 2 queued".
    public func statusLine() -> String {
        cond.lock()
        defer { cond.unlock() }
        return statusLineLocked()
    }

    // MARK: internals (the lock is held)

    private func statusLineLocked() -> String {
        QueueCounters.statusLine(table, running: runningID)
    }

    private func emitPosition(_ id: String) {
        guard subscribers.hasSubscribers(id), let e = table[id] else { return }
        subscribers.emit(JobEvent(event: .queued, job: id, time: Self.now(), position: table.view(e).position))
    }

    static func visible(_ e: JobEntry, to owner: JobOwner) -> Bool { owner.canSee(e.record.job) }

    static func newID() -> String {
        let n = UInt64.random(in: 0...UInt64.max)
        let hex = String(n, radix: 16)
        return String(repeating: "0", count: JobID.length - hex.count) + hex
    }

    /// Whether the state directory has room for a job's results (`minFreeBytes`, and at least 1 MiB).
    private func roomForResults() -> Bool {
        guard let free = spool.freeBytes() else { return true }
        return free >= max(minFreeBytes, 1 << 20)
    }

    /// Writes the job's newest record; writes for one queue are serialized so the last one wins. Returns whether
    /// it is on disk.
    @discardableResult
    private func persist(_ id: String) -> Bool {
        writeLock.withLock { _ in
            cond.lock()
            let record = table[id]?.record
            cond.unlock()
            guard let record else { return true }
            do { try spool.save(record) } catch {
                logger.error("cannot save job state", metadata: ["job": "\(id)", "error": "\(error)"])
                return false
            }
            return true
        }
    }
}
