// JobSubscribers: who listens to which job's events (the /events streams and waits), and the events that describe
// a job's state to a new listener. Held under the queue's lock; subscribers are called with it held.

import Foundation
import SDDAPI

struct JobSubscribers {
    typealias Subscriber = JobQueue.Subscriber

    private var byJob: [String: [UInt64: Subscriber]] = [:]
    private var nextToken: UInt64 = 1

    /// Registers `subscriber` for job `id`; the token undoes it.
    mutating func add(_ id: String, _ subscriber: @escaping Subscriber) -> UInt64 {
        let token = nextToken
        nextToken += 1
        byJob[id, default: [:]][token] = subscriber
        return token
    }

    mutating func remove(_ id: String, token: UInt64) {
        byJob[id]?[token] = nil
        if byJob[id]?.isEmpty == true { byJob[id] = nil }
    }

    /// Forgets every subscriber of a job that is gone.
    mutating func removeAll(_ id: String) { byJob[id] = nil }

    func hasSubscribers(_ id: String) -> Bool { byJob[id] != nil }

    /// Calls the job's subscribers; after a final event nothing more comes, so they are dropped.
    mutating func emit(_ event: JobEvent) {
        guard let subscribers = byJob[event.job] else { return }
        for s in subscribers.values { s(event) }
        if event.isFinal { byJob[event.job] = nil }
    }
}

/// The events that describe a job's state.
enum JobEvents {
    static func preview(_ id: String, _ png: [UInt8], step: Int, total: Int, time: Double) -> JobEvent {
        JobEvent(event: .preview, job: id, time: time, step: step, total: total,
                 previewPNG: Data(png).base64EncodedString())
    }

    /// The one event that ends a final job's stream.
    static func final(_ job: Job) -> JobEvent {
        let time = job.finishedAt ?? JobQueue.now()
        switch job.state {
        case .finished: return JobEvent(event: .finished, job: job.id, time: time, images: job.images)
        case .canceled: return JobEvent(event: .canceled, job: job.id, time: time)
        default: return JobEvent(event: .failed, job: job.id, time: time, error: job.error)
        }
    }

    /// What a new subscriber is sent first: the job's state now (`job` as clients see it, with its position).
    static func current(_ job: Job, preview: (png: [UInt8], step: Int, total: Int)?, now: Double) -> [JobEvent] {
        switch job.state {
        case .queued:
            return [JobEvent(event: .queued, job: job.id, time: now, position: job.position)]
        case .running:
            var events = [JobEvent(event: .started, job: job.id, time: job.startedAt ?? now, step: job.progress?.step,
                                   total: job.progress?.total)]
            if let p = job.progress, p.step > 0 {
                events.append(JobEvent(event: .step, job: job.id, time: now, step: p.step, total: p.total,
                                       etaSeconds: p.etaSeconds))
            }
            if let preview {
                events.append(Self.preview(job.id, preview.png, step: preview.step, total: preview.total, time: now))
            }
            return events
        case .finished, .failed, .canceled:
            return [final(job)]
        }
    }
}
