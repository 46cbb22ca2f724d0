// The queue's run order kept incrementally (QueueOrder, JobTable) matches sorting the queued jobs from scratch,
// through queueing, starting, canceling and requeueing; and positions close up when a job leaves the queue.

@testable import Daemon
import Foundation
import SDDAPI
import XCTest

final class QueueOrderTests: XCTestCase {
    /// The rule the order keeps, written as a full sort: resumed first, then higher priority, then arrival.
    func referenceOrder(_ table: JobTable) -> [String] {
        table.values.filter(\.isQueued).sorted { a, b in
            if a.resumeFirst != b.resumeFirst { return a.resumeFirst }
            let pa = a.record.job.settings.priority ?? 0, pb = b.record.job.settings.priority ?? 0
            if pa != pb { return pa > pb }
            if a.record.seq != b.record.seq { return a.record.seq < b.record.seq }
            return a.id < b.id
        }.map(\.id)
    }

    func entry(_ seq: UInt64, priority: Int) -> JobEntry {
        let id = String(format: "%016llx", seq)
        return JobEntry(record: JobRecord(seq: seq, job: Job(id: id, state: .queued, owner: 0, createdAt: 0,
                                                             settings: JobRequest(prompt: "p", priority: priority))))
    }

    func testIncrementalOrderMatchesAFullSortThroughRandomChanges() {
        var rng = SystemRandomNumberGenerator()
        var table = JobTable()
        var seq: UInt64 = 0
        for round in 0..<600 {
            let ids = Array(table.entries.keys)
            switch Int.random(in: 0..<5, using: &rng) {
            case 0, 1:
                seq += 1
                table.set(entry(seq, priority: Int.random(in: -2...2, using: &rng)))
            case 2:  // start one
                if let id = ids.randomElement(using: &rng) { table.update(id) { $0.record.job.state = .running } }
            case 3:  // requeue a stopped one first (as after a restart or a disk-full outcome)
                if let id = ids.randomElement(using: &rng) {
                    table.update(id) {
                        $0.record.job.state = .queued
                        $0.resumeFirst = Bool.random(using: &rng)
                    }
                }
            default:  // cancel or sweep
                if let id = ids.randomElement(using: &rng) {
                    if Bool.random(using: &rng) { table.update(id) { $0.record.job.state = .canceled } } else { table.remove(id) }
                }
            }
            let expected = referenceOrder(table)
            XCTAssertEqual(table.order.ids, expected, "round \(round)")
            for (i, id) in expected.enumerated() {
                XCTAssertEqual(table[id].map { table.view($0).position }, i + 1, "round \(round)")
            }
            if table.order.ids != expected { return }
        }
    }

    func testJobsThatAreNotQueuedHaveNoPosition() {
        var table = JobTable()
        table.set(entry(1, priority: 0))
        table.update(String(format: "%016llx", 1)) { $0.record.job.state = .running }
        XCTAssertEqual(table.queuedCount, 0)
        XCTAssertNil(table[String(format: "%016llx", 1)].flatMap { table.view($0).position })
    }

    func testPositionsCloseUpWhenAQueuedJobIsCanceled() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-order-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let q = JobQueue(spool: try Spool(root: dir), maxQueued: 10, logger: .init(label: "test"))
        func submit(_ priority: Int) throws -> Job {
            try q.submit(RequestValidation.resolve(JobRequest(prompt: "p", priority: priority), defaults: nil), owner: 1000)
        }
        let a = try submit(0), b = try submit(5), c = try submit(0)
        XCTAssertEqual([b, a, c].map { q.job($0.id, uid: 0)?.position }, [1, 2, 3])
        _ = try q.cancel(a.id, uid: 0)
        XCTAssertEqual([b, c].map { q.job($0.id, uid: 0)?.position }, [1, 2])
        XCTAssertNil(q.job(a.id, uid: 0)?.position)
        XCTAssertEqual(q.statusLine(), "idle, 2 queued")
    }
}
