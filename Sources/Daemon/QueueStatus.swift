// QueueStatus: the queue's counters and the views built from them — the /metrics and /v1/health snapshot and
// the one-line systemd STATUS= text.

import Foundation
import SDDAPI

/// Step-time statistics for sdd_step_seconds (a Prometheus histogram).
public struct StepStats: Sendable, Equatable {
    /// Upper bounds of the histogram buckets, seconds.
    public static let bounds: [Double] = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
    /// Cumulative counts per bound (Prometheus `le` semantics).
    public var buckets = [UInt64](repeating: 0, count: bounds.count)
    public var count: UInt64 = 0
    public var sum: Double = 0

    mutating func add(_ seconds: Double) {
        count += 1
        sum += seconds
        for (i, b) in Self.bounds.enumerated() where seconds <= b { buckets[i] += 1 }
    }
}

/// A point-in-time view for /metrics and /v1/health.
public struct QueueSnapshot: Sendable {
    public var queueDepth: Int
    public var jobsByState: [JobState: Int]
    public var running: String?
    public var steps: StepStats
    public var submittedTotal: UInt64
    public var rejectedTotal: UInt64
}

/// What the queue counts over its life (kept under its lock).
struct QueueCounters {
    var steps = StepStats()
    var submittedTotal: UInt64 = 0
    var rejectedTotal: UInt64 = 0

    func snapshot(_ table: JobTable, running: String?) -> QueueSnapshot {
        var byState: [JobState: Int] = [:]
        for s in JobState.allCases { byState[s] = 0 }
        for e in table.values { byState[e.record.job.state, default: 0] += 1 }
        return QueueSnapshot(queueDepth: byState[.queued] ?? 0, jobsByState: byState, running: running, steps: steps,
                             submittedTotal: submittedTotal, rejectedTotal: rejectedTotal)
    }

    /// "idle", "idle, 2 queued", or "job 3f2a: step 12/50, 2 queued".
    static func statusLine(_ table: JobTable, running: String?) -> String {
        let queued = table.queuedCount
        guard let id = running, let e = table[id] else {
            return queued == 0 ? "idle" : "idle, \(queued) queued"
        }
        let p = e.record.job.progress
        return "job \(JobID.short(id)): step \(p?.step ?? 0)/\(p?.total ?? e.record.job.settings.steps ?? 0), \(queued) queued"
    }
}
