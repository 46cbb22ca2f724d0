// The spool: jobs survive a restart of the queue, a running job resumes first, damage is set aside, retention.

import Daemon
import Foundation
import SDDAPI
import XCTest

final class SpoolTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-spool-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func makeQueue() throws -> JobQueue { JobQueue(spool: try Spool(root: dir), maxQueued: 100, logger: .init(label: "test")) }

    func submit(_ q: JobQueue, _ prompt: String, priority: Int = 0) throws -> Job {
        try q.submit(RequestValidation.resolve(JobRequest(prompt: prompt, priority: priority), defaults: nil), owner: 1000)
    }

    func testQueuedJobsSurviveARestartInOrder() throws {
        let q = try makeQueue()
        let a = try submit(q, "a"), b = try submit(q, "b")
        let restarted = try makeQueue()
        XCTAssertEqual(restarted.list(uid: 0).map(\.id), [a.id, b.id])
        XCTAssertEqual(restarted.list(uid: 0).map(\.position), [1, 2])
        let c = try submit(restarted, "c")
        XCTAssertEqual(restarted.job(c.id, uid: 0)?.position, 3, "arrival numbers continue after a restart")
    }

    func testAJobThatWasRunningResumesBeforeHigherPriorityWork() throws {
        let q = try makeQueue()
        let a = try submit(q, "a")
        guard case .job(let running) = q.next(until: Date()) else { return XCTFail("no job") }
        XCTAssertEqual(running.job.id, a.id)
        _ = try submit(q, "urgent", priority: 50)
        let restarted = try makeQueue()
        XCTAssertEqual(restarted.job(a.id, uid: 0)?.state, .queued)
        guard case .job(let next) = restarted.next(until: Date()) else { return XCTFail("no job") }
        XCTAssertEqual(next.job.id, a.id)
    }

    func testAnUnreadableRecordIsMovedAsideNotFatal() throws {
        let q = try makeQueue()
        let a = try submit(q, "a")
        try Data("{garbage".utf8).write(to: dir.appendingPathComponent("jobs/0123456789abcdef.json"))
        let restarted = try makeQueue()
        XCTAssertEqual(restarted.list(uid: 0).map(\.id), [a.id])
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("jobs/0123456789abcdef.json.corrupt").path))
    }

    func testRetentionRemovesOldFinishedJobsAndTheirFiles() throws {
        let q = try makeQueue()
        let a = try submit(q, "a")
        let b = try submit(q, "b")
        guard case .job = q.next(until: Date()) else { return XCTFail("no job") }
        try Data([1, 2, 3]).write(to: q.spool.imageURL(a.id, 0))
        q.complete(a.id, state: .finished, images: 1)
        XCTAssertEqual(q.sweep(maxAge: 3600, maxBytes: nil), [], "young jobs stay")
        XCTAssertEqual(q.sweep(maxAge: 60, maxBytes: nil, now: JobQueue.now() + 61), [a.id])
        XCTAssertNil(q.job(a.id, uid: 0))
        XCTAssertFalse(FileManager.default.fileExists(atPath: q.spool.imageURL(a.id, 0).path))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("jobs/\(a.id).json").path))
        XCTAssertEqual(q.job(b.id, uid: 0)?.state, .queued, "queued jobs are never swept")
    }

    func testRetentionBySizeRemovesTheOldestFinishedFirst() throws {
        let q = try makeQueue()
        var ids: [String] = []
        let start = JobQueue.now()
        for (i, p) in ["a", "b", "c"].enumerated() {
            let job = try submit(q, p)
            guard case .job = q.next(until: Date()) else { return XCTFail("no job") }
            try Data(repeating: 7, count: 10_000).write(to: q.spool.imageURL(job.id, 0))
            q.complete(job.id, state: .finished, images: 1, at: start + Double(i))  // "a" finished first
            ids.append(job.id)
        }
        let removed = q.sweep(maxAge: nil, maxBytes: 25_000)
        XCTAssertEqual(removed, [ids[0]])
        XCTAssertNotNil(q.job(ids[2], uid: 0))
    }
}
