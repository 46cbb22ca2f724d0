// The preview options of the commands: what `sdd serve --preview-every` and `sdctl generate --preview` refuse.
import Foundation
import XCTest

final class PreviewOptionTests: XCTestCase {
    func testServeRefusesANegativePreviewInterval() throws {
        let dir = URL(fileURLWithPath: "/tmp").appendingPathComponent("sdd-pv-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: dir) }
        let run = try GenerateCommandTests.runSDD(["serve", "--model", GenerateCommandTests.tinyModel,
                                                   "--socket", dir.appendingPathComponent("s.sock").path,
                                                   "--state-dir", dir.appendingPathComponent("state").path,
                                                   "--preview-every", "-1"])
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.stderr.contains("--preview-every"), run.stderr)
    }

    func testSdctlRefusesAPreviewWithoutWaitingOrToStdout() throws {
        for (args, message) in [(["--no-wait", "--preview", "p.png"], "--preview needs the wait"),
                                (["--preview", "-"], "--preview needs a file name")] {
            let run = try SdctlTests.sdctl(["generate"] + args + ["x"], socket: "/nonexistent/sdd.sock")
            XCTAssertEqual(run.status, 2, run.output)
            XCTAssertTrue(run.output.contains(message), run.output)
        }
    }
}
