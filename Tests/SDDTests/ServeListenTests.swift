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

    /// One HTTP/1.1 request over TCP to 127.0.0.1:`port`; the status code, or nil if nothing answered.
    func status(port: Int, _ path: String, authorization: String?) -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { return nil }
        let head = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + (authorization.map { "Authorization: \($0)\r\n" } ?? "") + "\r\n"
        _ = Array(head.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 12 else { return nil }
        return Int(String(decoding: buf[9..<12], as: UTF8.self))
    }

    func testServeAnswersOnTheTokenPortFromSDDListen() throws {
        // A free port: bind port 0, read it, release it for the daemon.
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, length) == 0 && getsockname(probe, $0, &length) == 0 }
        }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        close(probe)
        let serve = try ServeProcess(["serve", "--model", ProcessRunner.repository.appendingPathComponent("Tests/Fixtures/tiny-sd").path,
                                      "--socket", workDir.appendingPathComponent("s.sock").path,
                                      "--state-dir", workDir.appendingPathComponent("state").path],
                                     environment: ["SDD_LISTEN": "127.0.0.1:\(port)", "SDD_TOKENS": tokens],
                                     log: workDir.appendingPathComponent("serve.log"))
        defer { serve.stop() }
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 60) { self.status(port: port, "/v1/health", authorization: nil) != nil },
                      serve.stderr)
        XCTAssertEqual(status(port: port, "/v1/health", authorization: nil), 401)
        XCTAssertEqual(status(port: port, "/v1/health", authorization: "Bearer wrong-token-0123456789"), 401)
        XCTAssertEqual(status(port: port, "/v1/health", authorization: "Bearer alice-token-0123456789"), 200)
        XCTAssertEqual(status(port: port, "/sdapi/v1/sd-models", authorization: "Bearer alice-token-0123456789"), 200)
        serve.signal(SIGTERM)
        XCTAssertEqual(serve.waitExit(timeout: 60), 0, serve.stderr)
        XCTAssertNil(status(port: port, "/v1/health", authorization: nil), "the port is closed after shutdown")
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
