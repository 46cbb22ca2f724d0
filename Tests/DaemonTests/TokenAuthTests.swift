// The TCP listener's credentials and address rules: token files (format, mode), Authorization headers as the real
// clients send them (openai: Bearer; webuiapi: Basic with the token as password), and loopback-only addresses.

import Daemon
import Foundation
import XCTest

final class TokenAuthTests: XCTestCase {
    let text = """
        # NAME TOKEN
        alice  alice-token-0123456789
        webui\tcapture-token-0123456789

        alice  alice-second-token-abcdef
        """

    func testTokenFileMapsEachTokenToItsName() throws {
        let file = try TokenFile(text: text)
        XCTAssertEqual(file.names, ["alice", "webui", "alice"])
        XCTAssertEqual(file.name(authorization: "Bearer alice-token-0123456789"), "alice")
        XCTAssertEqual(file.name(authorization: "bearer alice-second-token-abcdef"), "alice")
    }

    func testTheRealClientsHeadersAuthenticate() throws {
        let file = try TokenFile(text: text)
        for (fixture, call) in [("openai.json", "images.generate"), ("a1111.json", "txt2img")] {
            let captured = try CapturedRequest.load(fixture, call: call)
            XCTAssertEqual(file.name(authorization: captured.authorization), "webui", "\(fixture): \(captured.authorization ?? "-")")
        }
    }

    func testMissingWrongAndMalformedCredentialsAreRefused() throws {
        let file = try TokenFile(text: text)
        let basicWrong = "Basic " + Data("webui:capture-token-0123456788".utf8).base64EncodedString()
        for header in [nil, "", "Bearer", "Bearer alice-token-012345678", "Bearer alice-token-01234567890",
                       "Token alice-token-0123456789", "Basic !!!", "Basic " + Data("no-colon".utf8).base64EncodedString(),
                       basicWrong, "Bearer alice"] {
            XCTAssertNil(file.name(authorization: header), header ?? "nil")
        }
        XCTAssertEqual(file.name(authorization: "Basic " + Data(":alice-token-0123456789".utf8).base64EncodedString()), "alice",
                       "Basic: any user name, the token as password")
    }

    func testBadTokenFilesAreErrorsNamingTheLine() {
        let cases = [
            ("alice short", "shorter than"), ("alice a b c", "expected \"NAME TOKEN\""), ("al/ice alice-token-0123456789", "name"),
            ("a alice-token-0123456789\nb alice-token-0123456789", "already given"), ("# nothing\n", "no \"NAME TOKEN\""),
        ]
        for (body, expected) in cases {
            XCTAssertThrowsError(try TokenFile(text: body, path: "/etc/sdd/tokens")) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(body): \(error)")
                XCTAssertTrue("\(error)".hasPrefix("/etc/sdd/tokens"), "\(error)")
            }
        }
    }

    func testTokenFilesOthersCanReadAreRefused() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-tokens-\(UUID().uuidString)").path
        defer { unlink(path) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(text.utf8)))
        for mode: mode_t in [0o644, 0o640, 0o604, 0o660, 0o602] {
            chmod(path, mode)
            XCTAssertThrowsError(try TokenFile.load(path: path), String(mode, radix: 8)) { error in
                XCTAssertTrue("\(error)".contains("chmod 600"), "\(error)")
            }
        }
        for mode: mode_t in [0o600, 0o400] {
            chmod(path, mode)
            XCTAssertEqual(try TokenFile.load(path: path).names.count, 3, String(mode, radix: 8))
        }
        XCTAssertThrowsError(try TokenFile.load(path: path + "-missing"))
    }

    func testListenAddressesParseAndOnlyLoopbackIsAllowedByDefault() throws {
        XCTAssertEqual(try TCPAddress.parse("127.0.0.1:7860"), TCPAddress(host: "127.0.0.1", port: 7860))
        XCTAssertEqual(try TCPAddress.parse("[::1]:7860"), TCPAddress(host: "::1", port: 7860))
        for loopback in ["127.0.0.1:1", "127.1.2.3:80", "[::1]:7860", "localhost:7860", "[::ffff:127.0.0.1]:9"] {
            XCTAssertTrue(try TCPAddress.parse(loopback).isLoopback, loopback)
        }
        for open in ["0.0.0.0:7860", "192.168.1.5:7860", "[::]:7860", "example.com:80", "128.0.0.1:1"] {
            XCTAssertFalse(try TCPAddress.parse(open).isLoopback, open)
            XCTAssertThrowsError(try TCPListenConfiguration(address: try TCPAddress.parse(open), tokensPath: "/x", any: false)) {
                XCTAssertTrue("\($0)".contains("--listen-any"), "\($0)")
            }
        }
        for bad in ["7860", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":7860", "[::1]7860", "::1:7860"] {
            XCTAssertThrowsError(try TCPAddress.parse(bad), bad)
        }
        XCTAssertThrowsError(try TCPListenConfiguration(address: TCPAddress(host: "127.0.0.1", port: 7860), tokensPath: nil,
                                                        any: false)) { XCTAssertTrue("\($0)".contains("--tokens"), "\($0)") }
    }
}
