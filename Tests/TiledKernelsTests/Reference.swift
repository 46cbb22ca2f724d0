// Reference: the plain, obviously-correct kernels (direct loops in Double) the tests compare against,
// plus deterministic pseudo-random inputs and a tolerance check that states its bound.
import XCTest
import MMapWeights
@testable import TiledKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A tiny 64-bit LCG (Knuth's MMIX constants): the same inputs on every machine and run.
struct LCG {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 1 }
    /// Uniform in [-1, 1).
    mutating func next() -> Float {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Float(Double(state >> 40) / Double(1 << 24) * 2 - 1)
    }
}

func randomTensor(_ shape: [Int], seed: UInt64, scale: Float = 1, offset: Float = 0) -> Tensor {
    var rng = LCG(seed: seed)
    return Tensor(shape: shape, data: (0..<shape.reduce(1, *)).map { _ in rng.next() * scale + offset })
}

func randomWeight(_ shape: [Int], seed: UInt64, scale: Float = 1, offset: Float = 0) -> Weight {
    Weight(shape: shape, array: randomTensor(shape, seed: seed, scale: scale, offset: offset).data)
}

extension Weight {
    var doubles: [Double] { values.map(Double.init) }
}

extension Tensor {
    var doubles: [Double] { data.map(Double.init) }
}

/// Passes when every |actual − expected| ≤ tolerance · max(1, max |expected|): an error bound relative to the
/// tensor's scale, which is what F32 accumulation guarantees (a near-zero element is as exact as a large one).
func assertClose(_ actual: Tensor, _ expected: [Double], shape: [Int], tolerance: Double,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(actual.shape, shape, "shape", file: file, line: line)
    guard actual.count == expected.count else {
        XCTFail("count \(actual.count) ≠ \(expected.count)", file: file, line: line)
        return
    }
    let magnitude = max(1, expected.map(abs).max() ?? 0)
    var worst = 0.0, worstIndex = 0
    for i in 0..<expected.count {
        let e = abs(Double(actual[i]) - expected[i])
        if !(e <= worst) { worst = e; worstIndex = i }  // NaN counts as worst
    }
    XCTAssert(worst <= tolerance * magnitude,
              "max error \(worst) at \(worstIndex) (got \(actual[worstIndex]), want \(expected[worstIndex])) "
              + "exceeds \(tolerance) × \(magnitude)", file: file, line: line)
}

enum Ref {
    static func linear(_ x: [Double], rows: Int, w: [Double], outF: Int, inF: Int, b: [Double]?) -> [Double] {
        var y = [Double](repeating: 0, count: rows * outF)
        for r in 0..<rows {
            for o in 0..<outF {
                var s = b?[o] ?? 0
                for i in 0..<inF { s += x[r * inF + i] * w[o * inF + i] }
                y[r * outF + o] = s
            }
        }
        return y
    }

    static func conv2d(_ x: [Double], n: Int, c: Int, h: Int, w: Int, weight: [Double], o: Int, kh: Int, kw: Int,
                       bias: [Double]?, stride: Int, padding: Int) -> (values: [Double], shape: [Int]) {
        let ho = (h + 2 * padding - kh) / stride + 1, wo = (w + 2 * padding - kw) / stride + 1
        var y = [Double](repeating: 0, count: n * o * ho * wo)
        for b in 0..<n {
            for oc in 0..<o {
                for i in 0..<ho {
                    for j in 0..<wo {
                        var s = bias?[oc] ?? 0
                        for ci in 0..<c {
                            for ki in 0..<kh {
                                for kj in 0..<kw {
                                    let iy = i * stride - padding + ki, ix = j * stride - padding + kj
                                    if iy < 0 || iy >= h || ix < 0 || ix >= w { continue }
                                    s += x[((b * c + ci) * h + iy) * w + ix] * weight[((oc * c + ci) * kh + ki) * kw + kj]
                                }
                            }
                        }
                        y[((b * o + oc) * ho + i) * wo + j] = s
                    }
                }
            }
        }
        return (y, [n, o, ho, wo])
    }

    static func groupNorm(_ x: [Double], n: Int, c: Int, spatial: Int, groups: Int,
                          gamma: [Double], beta: [Double], eps: Double) -> [Double] {
        var y = [Double](repeating: 0, count: x.count)
        let cg = c / groups
        for b in 0..<n {
            for g in 0..<groups {
                var vals = [Double]()
                for ch in (g * cg)..<((g + 1) * cg) {
                    for s in 0..<spatial { vals.append(x[(b * c + ch) * spatial + s]) }
                }
                let mean = vals.reduce(0, +) / Double(vals.count)
                let variance = vals.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(vals.count)
                for ch in (g * cg)..<((g + 1) * cg) {
                    for s in 0..<spatial {
                        let i = (b * c + ch) * spatial + s
                        y[i] = (x[i] - mean) / (variance + eps).squareRoot() * gamma[ch] + beta[ch]
                    }
                }
            }
        }
        return y
    }

    static func layerNorm(_ x: [Double], features f: Int, gamma: [Double], beta: [Double], eps: Double) -> [Double] {
        var y = [Double](repeating: 0, count: x.count)
        for r in 0..<(x.count / f) {
            let row = x[(r * f)..<((r + 1) * f)]
            let mean = row.reduce(0, +) / Double(f)
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(f)
            for i in 0..<f { y[r * f + i] = (x[r * f + i] - mean) / (variance + eps).squareRoot() * gamma[i] + beta[i] }
        }
        return y
    }

    static func silu(_ v: Double) -> Double { v / (1 + exp(-v)) }
    static func gelu(_ v: Double) -> Double { 0.5 * v * (1 + erf(v / 2.0.squareRoot())) }
    static func quickGelu(_ v: Double) -> Double { v / (1 + exp(-1.702 * v)) }

    /// Full softmax(q kᵀ / sqrt(D)) v per batch and head, with the whole score row materialized.
    static func attention(q: [Double], k: [Double], v: [Double], batch: Int, tq: Int, tk: Int, channels: Int,
                          heads: Int, causal: Bool) -> [Double] {
        let d = channels / heads
        var out = [Double](repeating: 0, count: batch * tq * channels)
        for b in 0..<batch {
            for h in 0..<heads {
                for i in 0..<tq {
                    var scores = [Double](repeating: -.infinity, count: tk)
                    for j in 0..<tk where !(causal && j > i) {
                        var s = 0.0
                        for e in 0..<d { s += q[(b * tq + i) * channels + h * d + e] * k[(b * tk + j) * channels + h * d + e] }
                        scores[j] = s / Double(d).squareRoot()
                    }
                    let m = scores.max() ?? 0
                    let p = scores.map { exp($0 - m) }
                    let total = p.reduce(0, +)
                    for e in 0..<d {
                        var s = 0.0
                        for j in 0..<tk { s += p[j] * v[(b * tk + j) * channels + h * d + e] }
                        out[(b * tq + i) * channels + h * d + e] = s / total
                    }
                }
            }
        }
        return out
    }
}

/// Keeps the bytes of a typed test weight alive.
final class ByteBox {
    let buffer: UnsafeMutableRawBufferPointer
    init(_ bytes: [UInt8]) {
        buffer = .allocate(byteCount: max(bytes.count, 1), alignment: 64)
        bytes.withUnsafeBytes { src in
            if let s = src.baseAddress { buffer.baseAddress!.copyMemory(from: s, byteCount: src.count) }
        }
    }
    deinit { buffer.deallocate() }
}

extension Weight {
    /// This F32 weight stored as `type` (ggml's reference quantizer); its F32 meaning is `dequantized()`.
    func converted(to type: TensorType) -> Weight {
        let bytes = Quantizer.quantize(dequantized(), to: type)
        let box = ByteBox(bytes)
        return Weight(shape: shape, type: type,
                      bytes: UnsafeRawBufferPointer(start: box.buffer.baseAddress, count: bytes.count), owner: box)
    }
}
