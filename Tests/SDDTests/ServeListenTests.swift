// `sdd serve --listen/--tokens/--listen-any` and SDD_LISTEN/SDD_TOKENS: configuration errors exit 2 naming the
// problem before anything is served, and the opt-in systemd drop-in for the TCP listener verifies cleanly.

import Foundation
import XCTest

final class ServeListenTests: XCTestCase {
    var workDir: URL!
    var tokens: String { workDir.appendingPathComponent("tokens").path }

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-listen-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: tokens, contents: Data("alice alice-token-0123456789\n".utf8),
                                       attributes: [.posixPermissions: 0o600])
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: workDir) }

    func serve(_ arguments: [String], environment: [String: String?] = [:]) throws -> ProcessRunner.Result {
        try ProcessRunner.run(GenerateCommandTests.binary.path, ["serve", "--model", ProcessRunner.repository.appendingPathComponent("Tests/Fixtures/tiny-sd").path,
            "--socket", workDir.appendingPathComponent("s.sock").path, "--state-dir", workDir.appendingPathComponent("state").path]
            + arguments, environment: environment)
    }

    func testConfigurationErrorsExit2AndNameTheProblem() throws {
        let cases: [([String], [String: String?], String)] = [
            (["--listen", "0.0.0.0:7860", "--tokens", tokens], [:], "--listen-any"),
            (["--listen", "127.0.0.1:7860"], ["SDD_TOKENS": nil], "--tokens"),
            (["--listen", "127.0.0.1"], [:], "HOST:PORT"),
            (["--tokens", tokens], ["SDD_LISTEN": nil], "--tokens is for --listen"),
            ([], ["SDD_LISTEN": "192.168.0.1:7860", "SDD_TOKENS": tokens], "--listen-any"),
        ]
        for (arguments, environment, expected) in cases {
            let r = try serve(arguments, environment: environment)
            XCTAssertEqual(r.status, 2, "\(arguments) \(environment): \(r.output)")
            XCTAssertTrue(r.stderr.contains(expected), "\(arguments): \(r.stderr)")
        }
        chmod(tokens, 0o644)
        let open = try serve(["--listen", "127.0.0.1:7860", "--tokens", tokens])
        XCTAssertEqual(open.status, 2, open.output)
        XCTAssertTrue(open.stderr.contains("chmod 600"), open.stderr)
    }

    func testTheTCPDropInVerifiesWithTheService() throws {
        guard let analyze = ProcessRunner.which("systemd-analyze") else { throw XCTSkip("systemd-analyze is not installed") }
        let units = workDir.appendingPathComponent("units")
        let dropIns = units.appendingPathComponent("sdd.service.d")
        try FileManager.default.createDirectory(at: dropIns, withIntermediateDirectories: true)
        let source = ProcessRunner.repository.appendingPathComponent("systemd")
        try (try String(contentsOf: source.appendingPathComponent("sdd.service"), encoding: .utf8))
            .replacingOccurrences(of: "/usr/local/bin/sdd", with: GenerateCommandTests.binary.path)
            .write(to: units.appendingPathComponent("sdd.service"), atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(at: source.appendingPathComponent("sdd.socket"), to: units.appendingPathComponent("sdd.socket"))
        let dropIn = try String(contentsOf: source.appendingPathComponent("sdd-tcp.conf"), encoding: .utf8)
        XCTAssertTrue(dropIn.contains("PrivateNetwork=no") && dropIn.contains("LoadCredential=tokens:"), dropIn)
        // A typo in the drop-in is reported (so the drop-in is really read), the drop-in itself is not.
        for (text, clean) in [(dropIn + "PrivateNetwrk=no\n", false), (dropIn, true)] {
            try text.write(to: dropIns.appendingPathComponent("tcp.conf"), atomically: true, encoding: .utf8)
            let r = try ProcessRunner.run(analyze, ["verify", "--man=no", units.appendingPathComponent("sdd.socket").path,
                                                    units.appendingPathComponent("sdd.service").path],
                                          environment: ["SYSTEMD_UNIT_PATH": units.path + ":"])
            XCTAssertEqual(r.output.isEmpty, clean, r.output)
        }
    }

    func testInstallShipsTheDropInAndDocumentsSDDListen() throws {
        let destdir = workDir.appendingPathComponent("stage")
        let install = ProcessRunner.repository.appendingPathComponent("scripts/install").path
        let r = try ProcessRunner.run(install, ["--bin-dir", ProcessRunner.binDirectory.path],
                                      environment: ["DESTDIR": destdir.path, "PREFIX": "/opt/sdd"])
        XCTAssertEqual(r.status, 0, r.output)
        let dropIn = try String(contentsOf: destdir.appendingPathComponent("opt/sdd/share/doc/sdd/sdd-tcp.conf"), encoding: .utf8)
        XCTAssertTrue(dropIn.contains("/opt/sdd/share/doc/sdd/sdd-tcp.conf"), dropIn)
        XCTAssertFalse(FileManager.default.fileExists(atPath: destdir.appendingPathComponent("etc/systemd/system/sdd.service.d").path),
                       "the drop-in is opt-in")
        let env = try String(contentsOf: destdir.appendingPathComponent("etc/sdd/sdd.env"), encoding: .utf8)
        XCTAssertTrue(env.contains("#SDD_LISTEN=127.0.0.1:7860") && env.contains("#SDD_TOKENS="), env)
    }
}
