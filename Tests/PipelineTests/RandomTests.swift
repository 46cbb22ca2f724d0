// TorchRandom against torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
// (Tests/Fixtures/reference/randn.safetensors). Tolerance: 1e-6 absolute (in practice bit-exact).
import Foundation
import XCTest

@testable import Pipeline

final class RandomTests: XCTestCase {
    static let tolerance: Float = 1e-6

    func shape(_ text: Substring) -> [Int] { text.split(separator: "x").compactMap { Int($0) } }

    func assertClose(_ got: [Float], _ expected: [Float], _ what: String) {
        XCTAssertEqual(got.count, expected.count, what)
        var worst: Float = 0
        for (a, b) in zip(got, expected) { worst = max(worst, abs(a - b)) }
        XCTAssertLessThanOrEqual(worst, Self.tolerance, "\(what): max |Δ| = \(worst)")
    }

    func testFreshGeneratorMatchesTorchForEverySeedAndShape() throws {
        let fixtures = try SamplingFixtures.safetensors("randn.safetensors")
        let singles = fixtures.filter { $0.key.hasPrefix("single/") }
        XCTAssertEqual(singles.count, 20)
        for (key, expected) in singles {
            let parts = key.split(separator: "/")
            let seed = try XCTUnwrap(UInt64(parts[1]))
            var random = TorchRandom(seed: seed, boxMuller: .avx2)
            let tensor = random.randn(shape(parts[2]))
            XCTAssertEqual(tensor.shape, expected.shape, key)
            assertClose(tensor.data, expected.values, key)
        }
    }

    func testConsecutiveCallsContinueTheStream() throws {
        let fixtures = try SamplingFixtures.safetensors("randn.safetensors")
        for seed: UInt64 in [0, 42, (1 << 32) + 5, 123_456_789] {
            let calls = fixtures.filter { $0.key.hasPrefix("sequence/\(seed)/") }
                .map { (index: Int($0.key.split(separator: "/")[2]) ?? -1, key: $0.key, value: $0.value) }
                .sorted { $0.index < $1.index }
            XCTAssertEqual(calls.count, 6)
            var random = TorchRandom(seed: seed, boxMuller: .avx2)
            for call in calls {
                let tensor = random.randn(shape(call.key.split(separator: "/")[3]))
                assertClose(tensor.data, call.value.values, call.key)
            }
        }
    }

    func testScalarBoxMullerMatchesTorchWithoutSIMD() {
        // torch.randn(20, generator=manual_seed(42)) with ATEN_CPU_CAPABILITY=default (what ARM
        // builds run), torch 2.15.
        let expected: [Float] = [
            1.9269150495529175, 1.4872841835021973, 0.9007171988487244, -2.1055214405059814, -0.7581311464309692,
            1.078317642211914, 0.8008005023002625, 1.680620551109314, 0.35585978627204895, -0.6866229772567749,
            -0.4933563470840454, 0.2414878010749817, -0.2316243201494217, 0.041759490966796875, -0.2515752911567688,
            0.859858512878418, -0.30972692370414734, -0.3957104980945587, 0.8034093379974365, -0.6215953826904297,
        ]
        var random = TorchRandom(seed: 42, boxMuller: .scalar)
        assertClose(random.randn([20]).data, expected, "scalar seed 42")
    }

    func testSeedUsesLow32Bits() {
        var a = TorchRandom(seed: 5)
        var b = TorchRandom(seed: (1 << 32) + 5)
        XCTAssertEqual(a.randn([20]).data, b.randn([20]).data)
    }

    func testMT19937MatchesReferenceOutput() {
        // std::mt19937 with the default seed 5489: the 10000th output is 4123659995 (C++ standard).
        var random = TorchRandom(seed: 5489)
        var value: UInt32 = 0
        for _ in 0..<10000 { value = random.nextUInt32() }
        XCTAssertEqual(value, 4_123_659_995)
    }

    func testCheckpointedStateResumesTheSameStream() throws {
        var random = TorchRandom(seed: 7)
        _ = random.randn([3])  // leaves a cached normal, which must survive the round trip
        let data = try JSONEncoder().encode(random)
        var restored = try JSONDecoder().decode(TorchRandom.self, from: data)
        XCTAssertEqual(random, restored)
        XCTAssertEqual(random.randn([5]).data, restored.randn([5]).data)
        XCTAssertEqual(random.randn([1, 4, 8, 8]).data, restored.randn([1, 4, 8, 8]).data)
    }
}
