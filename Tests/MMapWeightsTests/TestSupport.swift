// Helpers for MMapWeights tests: scratch folders and a deterministic random generator.

import Foundation
import XCTest

/// A fresh folder under the system temp directory, removed when the test ends.
func makeScratchDirectory(_ test: XCTestCase, file: StaticString = #filePath) throws -> URL {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("mmapweights-tests-\(getpid())-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
    return dir
}

/// Writes `bytes` to `dir/name` and returns the URL.
@discardableResult
func writeFile(_ bytes: [UInt8], _ dir: URL, _ name: String) throws -> URL {
    let url = dir.appendingPathComponent(name)
    try Data(bytes).write(to: url)
    return url
}

/// SplitMix64: a tiny deterministic generator so fuzz cases are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func littleEndianBytes<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    withUnsafeBytes(of: v.littleEndian) { Array($0) }
}
