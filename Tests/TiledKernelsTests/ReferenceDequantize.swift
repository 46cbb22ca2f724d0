// ReferenceDequantize: an independent scalar decoder of every TensorType, written in Swift from ggml's
// dequantize_row_* — the oracle the C table's decoders (every CPU path) are checked against, bit for bit.
import MMapWeights

extension TensorType {
    /// Decodes `count` elements (a multiple of blockSize) starting at `source` into `destination`, block by
    /// block, exactly as ggml's dequantize_row_* functions.
    func referenceDequantize(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>) {
        func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
            Float32Conversion.halfToFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
        }
        switch self {
        case .f32:
            UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: count * 4)
        case .f16:
            for i in 0..<count { destination[i] = half(source, 2 * i) }
        case .bf16:
            for i in 0..<count {
                destination[i] = Float32Conversion.bfloat16ToFloat(
                    UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            }
        case .q8_0:
            for b in 0..<(count / 32) {
                let block = source + b * 34
                let d = half(block, 0)
                let qs = (block + 2).assumingMemoryBound(to: Int8.self)
                let y = destination + b * 32
                for j in 0..<32 { y[j] = Float(qs[j]) * d }
            }
        case .q4_0, .q4_1:
            let hasMin = self == .q4_1
            for b in 0..<(count / 32) {
                let block = source + b * blockBytes
                let d = half(block, 0)
                let m: Float = hasMin ? half(block, 2) : 0
                let qs = (block + (hasMin ? 4 : 2)).assumingMemoryBound(to: UInt8.self)
                let y = destination + b * 32
                for j in 0..<16 {
                    let lo = Int32(qs[j] & 0x0F), hi = Int32(qs[j] >> 4)
                    if hasMin {
                        y[j] = Float(lo) * d + m
                        y[j + 16] = Float(hi) * d + m
                    } else {
                        y[j] = Float(lo - 8) * d
                        y[j + 16] = Float(hi - 8) * d
                    }
                }
            }
        case .q5_0, .q5_1:
            let hasMin = self == .q5_1
            for b in 0..<(count / 32) {
                let block = source + b * blockBytes
                let d = half(block, 0)
                let m: Float = hasMin ? half(block, 2) : 0
                let qhOffset = hasMin ? 4 : 2
                let qh = UInt32(littleEndian: block.loadUnaligned(fromByteOffset: qhOffset, as: UInt32.self))
                let qs = (block + qhOffset + 4).assumingMemoryBound(to: UInt8.self)
                let y = destination + b * 32
                for j in 0..<16 {
                    let xh0 = Int32(((qh >> UInt32(j)) << 4) & 0x10)
                    let xh1 = Int32((qh >> UInt32(j + 12)) & 0x10)
                    let x0 = Int32(qs[j] & 0x0F) | xh0
                    let x1 = Int32(qs[j] >> 4) | xh1
                    if hasMin {
                        y[j] = Float(x0) * d + m
                        y[j + 16] = Float(x1) * d + m
                    } else {
                        y[j] = Float(x0 - 16) * d
                        y[j + 16] = Float(x1 - 16) * d
                    }
                }
            }
        case .q4_K, .q5_K:
            // ggml's dequantize_row_q4_K / _q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
            let five = self == .q5_K
            for b in 0..<(count / 256) {
                let block = source + b * blockBytes
                let d = half(block, 0), dmin = half(block, 2)
                let scales = (block + 4).assumingMemoryBound(to: UInt8.self)
                let qh = (block + 16).assumingMemoryBound(to: UInt8.self)
                var q = (block + (five ? 48 : 16)).assumingMemoryBound(to: UInt8.self)
                var y = destination + b * 256
                var u1: UInt8 = 1, u2: UInt8 = 2
                for pair in 0..<4 {
                    let (sc1, m1) = scaleMinK4(2 * pair, scales)
                    let (sc2, m2) = scaleMinK4(2 * pair + 1, scales)
                    let d1 = d * Float(sc1), min1 = dmin * Float(m1)
                    let d2 = d * Float(sc2), min2 = dmin * Float(m2)
                    for l in 0..<32 {
                        let high: UInt8 = five && (qh[l] & u1) != 0 ? 16 : 0
                        y[l] = d1 * Float((q[l] & 0x0F) + high) - min1
                    }
                    for l in 0..<32 {
                        let high: UInt8 = five && (qh[l] & u2) != 0 ? 16 : 0
                        y[32 + l] = d2 * Float((q[l] >> 4) + high) - min2
                    }
                    q += 32
                    y += 64
                    u1 <<= 2
                    u2 <<= 2
                }
            }
        case .q6_K:
            // ggml's dequantize_row_q6_K: 16 sub-blocks of 16 with int8 scales.
            for b in 0..<(count / 256) {
                let block = source + b * 210
                let d = half(block, 208)
                var ql = block.assumingMemoryBound(to: UInt8.self)
                var qh = (block + 128).assumingMemoryBound(to: UInt8.self)
                var sc = (block + 192).assumingMemoryBound(to: Int8.self)
                var y = destination + b * 256
                for _ in 0..<2 {
                    for l in 0..<32 {
                        let s = l / 16
                        let q1 = Int32((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32
                        let q2 = Int32((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                        let q3 = Int32((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                        let q4 = Int32((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                        y[l] = d * Float(sc[s]) * Float(q1)
                        y[l + 32] = d * Float(sc[s + 2]) * Float(q2)
                        y[l + 64] = d * Float(sc[s + 4]) * Float(q3)
                        y[l + 96] = d * Float(sc[s + 6]) * Float(q4)
                    }
                    y += 128
                    ql += 64
                    qh += 32
                    sc += 8
                }
            }
        }
    }

    /// ggml's get_scale_min_k4: the j-th 6-bit scale and min of a Q4_K/Q5_K super-block.
    private func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
        if j < 4 { return (q[j] & 63, q[j + 4] & 63) }
        return ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}
