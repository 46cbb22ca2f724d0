// CLIPTokenizer against transformers' CLIPTokenizer ids (Tests/Fixtures/reference/tokens.json).
import Foundation
import XCTest

@testable import Pipeline

final class TokenizerTests: XCTestCase {
    static let shared: Result<CLIPTokenizer, Error> = Result { try CLIPTokenizer(directory: SamplingFixtures.tokenizer) }

    func tokenizer() throws -> CLIPTokenizer { try Self.shared.get() }

    func testAstronautPromptGivesCLIPIds() throws {
        let ids = try tokenizer().encode("a photograph of an astronaut riding a horse").ids
        XCTAssertEqual(Array(ids.prefix(10)), [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407])
        XCTAssertEqual(ids.count, 77)
        XCTAssertTrue(ids[10...].allSatisfy { $0 == 49407 })
    }

    func testEveryReferencePromptMatchesTransformers() throws {
        let tok = try tokenizer()
        let cases = try XCTUnwrap(SamplingFixtures.json("tokens.json")["cases"] as? [[String: Any]])
        XCTAssertGreaterThan(cases.count, 15)
        for c in cases {
            let prompt = try XCTUnwrap(c["prompt"] as? String)
            let expected = try XCTUnwrap(c["ids"] as? [Int]).map { Int32($0) }
            let result = tok.encode(prompt)
            XCTAssertEqual(result.ids, expected, "prompt: \(prompt.debugDescription)")
            XCTAssertEqual(result.tokenCount, c["token_count"] as? Int, "prompt: \(prompt.debugDescription)")
            XCTAssertEqual(result.truncated, c["truncated"] as? Bool, "prompt: \(prompt.debugDescription)")
        }
    }

    func testLongPromptIsTruncatedWithEOSLast() throws {
        let result = try tokenizer().encode(String(repeating: "horse ", count: 100))
        XCTAssertTrue(result.truncated)
        XCTAssertEqual(result.tokenCount, 102)
        XCTAssertEqual(result.ids.count, 77)
        XCTAssertEqual(result.ids.first, 49406)
        XCTAssertEqual(result.ids.last, 49407)
    }

    func testEmptyPromptIsBOSEOSPadding() throws {
        let result = try tokenizer().encode("")
        XCTAssertEqual(result.tokenCount, 2)
        XCTAssertEqual(Array(result.ids.prefix(2)), [49406, 49407])
        XCTAssertFalse(result.truncated)
    }

    func testSpecialTokensFromConfigFiles() throws {
        let tok = try tokenizer()
        XCTAssertEqual(tok.bosID, 49406)
        XCTAssertEqual(tok.eosID, 49407)
        XCTAssertEqual(tok.padID, 49407)
        XCTAssertEqual(tok.modelMaxLength, 77)
        XCTAssertEqual(tok.vocabularySize, 49408)
    }

    func testPadTokenOverrideFromSpecialTokensMap() throws {
        // SD 2.x tokenizers pad with "!" (id 0).
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for name in ["vocab.json", "merges.txt"] {
            try FileManager.default.copyItem(
                at: SamplingFixtures.tokenizer.appendingPathComponent(name), to: dir.appendingPathComponent(name))
        }
        try Data(#"{"pad_token": {"content": "!", "lstrip": false}}"#.utf8)
            .write(to: dir.appendingPathComponent("special_tokens_map.json"))
        let tok = try CLIPTokenizer(directory: dir)
        XCTAssertEqual(tok.padID, 0)
        let ids = tok.encode("a horse").ids
        XCTAssertEqual(Array(ids.prefix(5)), [49406, 320, 4558, 49407, 0])
    }

    func testMissingVocabularyNamesTheFile() {
        let dir = URL(fileURLWithPath: "/nonexistent-sdd-tokenizer")
        XCTAssertThrowsError(try CLIPTokenizer(directory: dir)) { error in
            XCTAssertEqual(error as? TokenizerError, .missingFile("/nonexistent-sdd-tokenizer/vocab.json"))
        }
    }

    func testMalformedMergesNamesTheFileAndLine() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(
            at: SamplingFixtures.tokenizer.appendingPathComponent("vocab.json"),
            to: dir.appendingPathComponent("vocab.json"))
        try Data("#version: 0.2\ni n\nnot-a-merge\n".utf8).write(to: dir.appendingPathComponent("merges.txt"))
        XCTAssertThrowsError(try CLIPTokenizer(directory: dir)) { error in
            guard case .malformed(let file, let reason)? = error as? TokenizerError else {
                return XCTFail("unexpected \(error)")
            }
            XCTAssertTrue(file.hasSuffix("merges.txt"))
            XCTAssertTrue(reason.contains("line 3"), reason)
        }
    }
}
