// JobWait: an answer that comes once a job is final. The OpenAI and AUTOMATIC1111 routes answer synchronously,
// yet each request is an ordinary durable job: the HTTP handler subscribes to it without holding a thread, and a
// client that goes away only drops its subscription — the job finishes and stays fetchable.

import Dispatch
import Foundation
import SDDAPI

public struct JobWait: Sendable {
    /// The job to wait for.
    public let id: String
    /// Who waits (the job's owner).
    public let owner: JobOwner
    /// Builds the answer from the final job; runs off the event loop (it reads image files).
    public let answer: @Sendable (Job) -> APIResponse

    public init(id: String, owner: JobOwner, answer: @escaping @Sendable (Job) -> APIResponse) {
        self.id = id
        self.owner = owner
        self.answer = answer
    }

    /// Calls `done` exactly once, with the answer, once the job is final. Returns the subscription token to drop
    /// if the client goes away (nil: nothing to drop — the job was already final or is not visible).
    public func start(on queue: JobQueue, done: @escaping @Sendable (APIResponse) -> Void) -> UInt64? {
        let (id, owner, answer) = (self.id, self.owner, self.answer)
        let finish: @Sendable () -> Void = {
            // Not on the subscriber's call: it runs with the queue locked and must not call back into it.
            DispatchQueue.global().async {
                if let job = queue.job(id, owner: owner) {
                    done(answer(job))
                } else {
                    done(.error(APIError(.notFound, "job \(id) is gone (removed by retention?)")))
                }
            }
        }
        guard let subscribed = queue.subscribe(id, owner: owner, { event in if event.isFinal { finish() } }) else {
            done(.error(APIError(.notFound, "no job \(id)")))
            return nil
        }
        if subscribed.token == nil { finish() }
        return subscribed.token
    }

    /// Blocks until the answer is there, at most `timeout` seconds (nil then). For tests and thread-based callers.
    public func wait(on queue: JobQueue, timeout: Double) -> APIResponse? {
        let box = AnswerBox()
        let token = start(on: queue) { box.set($0) }
        let answer = box.wait(timeout: timeout)
        if answer == nil, let token { queue.unsubscribe(id, token: token) }
        return answer
    }
}

/// One answer handed from a callback to a waiting thread.
private final class AnswerBox: @unchecked Sendable {
    private let cond = NSCondition()
    private var value: APIResponse?

    func set(_ v: APIResponse) {
        cond.lock()
        value = v
        cond.broadcast()
        cond.unlock()
    }

    func wait(timeout: Double) -> APIResponse? {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock()
        defer { cond.unlock() }
        while value == nil, cond.wait(until: deadline) {}
        return value
    }
}
