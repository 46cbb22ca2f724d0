// The spool under write failures (a full disk, injected through `SpoolWriteFaults`): an outcome that cannot be
// written is never announced, and what a restart finds agrees with what clients were told. Also the temp-file
// names the spool deletes at start.

import Daemon
import Foundation
import SDDAPI
import XCTest

final class SpoolFaultTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-spool-fault-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// Whether writes fail with ENOSPC now (set by the test, read by the spool's writer).
    final class DiskFull: @unchecked Sendable {
        private let lock = NSLock()
        private var full = false
        var isFull: Bool {
            get { lock.lock(); defer { lock.unlock() }; return full }
            set { lock.lock(); full = newValue; lock.unlock() }
        }
    }

    final class Events: @unchecked Sendable {
        private let lock = NSLock()
        private var list: [JobEvent] = []
        func add(_ e: JobEvent) { lock.lock(); list.append(e); lock.unlock() }
        var all: [JobEvent] { lock.lock(); defer { lock.unlock() }; return list }
    }

    func testAnOutcomeThatCannotBeWrittenIsNotAnnouncedAndTheJobRunsAgainWhenThereIsRoom() throws {
        let disk = DiskFull()
        let spool = try Spool(root: dir, faults: SpoolWriteFaults { _ in disk.isFull ? ENOSPC : nil })
        let queue = JobQueue(spool: spool, maxQueued: 10, logger: .init(label: "test"))
        let job = try queue.submit(RequestValidation.resolve(JobRequest(prompt: "a"), defaults: nil), owner: 1000)
        let events = Events()
        _ = queue.subscribe(job.id, uid: 0) { events.add($0) }
        guard case .job = queue.next(until: Date()) else { return XCTFail("no job") }

        disk.isFull = true
        XCTAssertFalse(queue.complete(job.id, state: .failed, error: APIError(.generationFailed, "ENOSPC writing the image")))
        XCTAssertEqual(queue.job(job.id, uid: 0)?.state, .queued, "not failed: that could not be written")
        XCTAssertFalse(events.all.contains { $0.isFinal }, "nobody was told it ended: \(events.all.map(\.event))")

        // A restart now finds it unfinished too, and runs it again (first, from its checkpoint).
        let restarted = JobQueue(spool: try Spool(root: dir), maxQueued: 10, logger: .init(label: "test"))
        XCTAssertEqual(restarted.job(job.id, uid: 0)?.state, .queued)
        guard case .job(let resumed) = restarted.next(until: Date()) else { return XCTFail("not resumed after a restart") }
        XCTAssertEqual(resumed.job.id, job.id)

        // Without a restart it runs again once writes succeed (it is retried a few seconds later at the earliest).
        disk.isFull = false
        guard case .job(let again) = queue.next(until: Date().addingTimeInterval(30)) else {
            return XCTFail("not run again once there is room")
        }
        XCTAssertEqual(again.job.id, job.id)
        XCTAssertTrue(queue.complete(job.id, state: .finished))
        XCTAssertEqual(events.all.last?.event, .finished)
        let reloaded = JobQueue(spool: try Spool(root: dir), maxQueued: 10, logger: .init(label: "test"))
        XCTAssertEqual(reloaded.job(job.id, uid: 0)?.state, .finished)
    }

    func testASubmissionThatCannotBeWrittenIsRefusedAndNotQueued() throws {
        let spool = try Spool(root: dir, faults: SpoolWriteFaults { _ in ENOSPC })
        let queue = JobQueue(spool: spool, maxQueued: 10, logger: .init(label: "test"))
        XCTAssertThrowsError(try queue.submit(RequestValidation.resolve(JobRequest(prompt: "a"), defaults: nil), owner: 1)) {
            XCTAssertEqual(($0 as? APIError)?.code, .internalError)
        }
        XCTAssertEqual(queue.list(uid: 0).count, 0)
    }

    func testOnlyTheSpoolsOwnTempFileNamesCountAsTempFiles() {
        for own in [".0123456789abcdef.json.4242.17.tmp", ".0123456789abcdef-0.png.1.4294967295.tmp",
                    ".0123456789abcdef-15.png.99.0.tmp"] {
            XCTAssertTrue(Spool.isOwnTemporaryFile(own), own)
        }
        for other in ["notes.tmp", ".notes.tmp", ".0123456789abcdef.json.tmp", ".0123456789abcdef.json.1.2.3.tmp",
                      ".0123456789ABCDEF.json.1.2.tmp", ".0123456789abcdef.txt.1.2.tmp", ".x-0.png.1.2.tmp",
                      ".0123456789abcdef-0.png.a.2.tmp", "0123456789abcdef.json.1.2.tmp"] {
            XCTAssertFalse(Spool.isOwnTemporaryFile(other), other)
        }
    }

    func testImagesAreReadWithoutFollowingALinkPlantedInTheirPlace() throws {
        let spool = try Spool(root: dir)
        try spool.writeImage("0123456789abcdef", 0, [1, 2, 3])
        XCTAssertEqual(spool.readImage("0123456789abcdef", 0), Data([1, 2, 3]))
        let opened = try XCTUnwrap(spool.openImage("0123456789abcdef", 0))
        XCTAssertEqual(opened.size, 3)
        close(opened.fd)
        let victim = dir.appendingPathComponent("victim")
        try Data("secret".utf8).write(to: victim)
        try FileManager.default.createSymbolicLink(atPath: spool.imageURL("0123456789abcdef", 1).path,
                                                   withDestinationPath: victim.path)
        XCTAssertNil(spool.readImage("0123456789abcdef", 1))
        XCTAssertNil(spool.openImage("0123456789abcdef", 1))
        // Writing in its place replaces the link, never the file it points to.
        try spool.writeImage("0123456789abcdef", 1, [9])
        XCTAssertEqual(try Data(contentsOf: victim), Data("secret".utf8))
        XCTAssertEqual(spool.readImage("0123456789abcdef", 1), Data([9]))
    }
}
