// The tokenizer's work is bounded whatever the prompt (issue #12, defect 12): a 60 KB single word and 30 000
// combining marks tokenize quickly, to the same ids the whole text gives.

import Foundation
import XCTest

@testable import Pipeline

final class TokenizerBoundsTests: XCTestCase {
    func tokenizer() throws -> CLIPTokenizer { try TokenizerTests.shared.get() }

    /// Seconds `body` takes.
    func timed<T>(_ body: () -> T) -> (T, Double) {
        let clock = Date()
        let value = body()
        return (value, Date().timeIntervalSince(clock))
    }

    /// 77 ids from the unbounded tokenizer on `text` (bos, the first 75 tokens, eos, padding).
    func reference(_ tok: CLIPTokenizer, _ text: String) -> [Int32] {
        let tokens = tok.tokenize(text)
        return [tok.bosID] + tokens.prefix(75) + [tok.eosID] + Array(repeating: tok.padID, count: max(0, 75 - tokens.count))
    }

    // The unbounded tokenizer took 4.1 s (60 KB word) and 2.6 s (30k marks) in a release build; bounded, both take
    // milliseconds there. 1 s leaves room for a debug build on a loaded 2-core machine.
    static let timeLimit = 1.0

    func testASixtyKilobyteSingleWordTokenizesQuicklyToTheSameIds() throws {
        let tok = try tokenizer()
        let letters = Array("abcdefghijklmnopqrstuvwxyz")
        let word = String((0..<60_000).map { letters[($0 * 7 + $0 / 26) % 26] })
        let (result, seconds) = timed { tok.encode(word) }
        XCTAssertLessThan(seconds, Self.timeLimit)
        XCTAssertTrue(result.truncated)
        XCTAssertFalse(result.tokenCountIsExact)
        // The whole word's first tokens come from its start: 8 KB of it (well past the cut) gives them unbounded.
        XCTAssertEqual(result.ids, reference(tok, String(word.prefix(8_000))))
    }

    func testThirtyThousandCombiningMarksTokenizeQuicklyToTheSameIds() throws {
        let tok = try tokenizer()
        let marks = "a photo of e" + String(repeating: "\u{0301}", count: 30_000)
        let (result, seconds) = timed { tok.encode(marks) }
        XCTAssertLessThan(seconds, Self.timeLimit)
        XCTAssertTrue(result.truncated)
        XCTAssertEqual(result.ids, reference(tok, "a photo of e" + String(repeating: "\u{0301}", count: 4_000)))
    }

    func testAVeryLongPromptOfWordsStopsCountingButKeepsItsIds() throws {
        let tok = try tokenizer()
        let (result, seconds) = timed { tok.encode(String(repeating: "horse riding ", count: 20_000)) }
        XCTAssertLessThan(seconds, Self.timeLimit)
        XCTAssertEqual(result.ids, tok.encode(String(repeating: "horse riding ", count: 100)).ids)
        XCTAssertFalse(result.tokenCountIsExact)
        XCTAssertGreaterThanOrEqual(result.tokenCount, CLIPTokenizer.countLimit(77))
    }

    func testOrdinaryPromptsKeepAnExactCount() throws {
        let result = try tokenizer().encode(String(repeating: "horse ", count: 300))
        XCTAssertTrue(result.tokenCountIsExact)
        XCTAssertEqual(result.tokenCount, 302)
    }
}
