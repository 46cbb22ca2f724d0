// Quantize: F32 → the stored weight types, bit-exact with ggml's reference quantize_row_*_ref (and PyPI
// gguf.quants): Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 blocks of 32, F16 (round to nearest even, ggml's
// fp32_to_fp16) and BF16 (round to nearest even, NaN quieted, ggml's fp32_to_bf16).

/// Row quantizers with ggml's rounding. Inputs are F32; `count` must be a multiple of the block size.
public enum Quantizer {
    /// Quantizes `values` (a multiple of `type.blockSize` of them) into `type`'s bytes.
    public static func quantize(_ values: [Float], to type: TensorType) -> [UInt8] {
        precondition(values.count % type.blockSize == 0,
                     "Quantizer: \(values.count) values are not whole \(type.name) blocks")
        var out = [UInt8](repeating: 0, count: type.byteCount(elements: values.count)!)
        values.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBytes { quantize(src, to: type, into: $0) }
        }
        return out
    }

    /// Quantizes `source` into `destination`, which must hold exactly `type.byteCount(elements:)` bytes.
    public static func quantize(_ source: UnsafeBufferPointer<Float>, to type: TensorType,
                                into destination: UnsafeMutableRawBufferPointer) {
        let n = source.count
        precondition(n % type.blockSize == 0 && destination.count == type.byteCount(elements: n),
                     "Quantizer: \(destination.count) bytes for \(n) \(type.name) values")
        guard n > 0, let x = source.baseAddress, let y = destination.baseAddress else { return }
        switch type {
        case .f32:
            y.copyMemory(from: x, byteCount: n * 4)
        case .f16:
            for i in 0..<n {
                y.storeBytes(of: Float32Conversion.floatToHalf(x[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        case .bf16:
            for i in 0..<n {
                y.storeBytes(of: Float32Conversion.floatToBFloat16(x[i]).littleEndian, toByteOffset: 2 * i,
                             as: UInt16.self)
            }
        case .q8_0:
            for b in 0..<(n / 32) { q8_0(x + 32 * b, y + 34 * b) }
        case .q4_0:
            for b in 0..<(n / 32) { q4_0(x + 32 * b, y + 18 * b) }
        case .q4_1:
            for b in 0..<(n / 32) { q4_1(x + 32 * b, y + 20 * b) }
        case .q5_0:
            for b in 0..<(n / 32) { q5_0(x + 32 * b, y + 22 * b) }
        case .q5_1:
            for b in 0..<(n / 32) { q5_1(x + 32 * b, y + 24 * b) }
        case .q4_K, .q5_K, .q6_K:
            // Callers check `isWritable` first (sdd convert refuses these types by name).
            preconditionFailure("Quantizer: \(type.name) is read only")
        }
    }

    /// C's `(int8_t)f` as x86 compiles it (cvttss2si, then the low byte): truncation toward zero,
    /// with NaN and out-of-range giving INT32_MIN's low byte (0) instead of trapping. Finite inputs
    /// in ggml's ranges convert exactly as C does.
    @inline(__always)
    static func truncToInt8(_ f: Float) -> Int8 {
        let i: Int32 = (f.isNaN || f >= 2_147_483_648 || f < -2_147_483_648) ? Int32.min : Int32(f)
        return Int8(truncatingIfNeeded: i)
    }

    @inline(__always)
    private static func storeHalf(_ f: Float, _ p: UnsafeMutableRawPointer, _ offset: Int) {
        p.storeBytes(of: Float32Conversion.floatToHalf(f).littleEndian, toByteOffset: offset, as: UInt16.self)
    }

    /// quantize_row_q8_0_ref: d = amax/127, q = roundf(x/d) (half away from zero).
    @inline(__always)
    private static func q8_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 { amax = amax > abs(x[j]) ? amax : abs(x[j]) }  // C's MAX, NaN included
        let d = amax / 127
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        for j in 0..<32 {
            let q = truncToInt8((x[j] * id).rounded(.toNearestOrAwayFromZero))
            y.storeBytes(of: UInt8(bitPattern: q), toByteOffset: 2 + j, as: UInt8.self)
        }
    }

    /// The first element of largest magnitude (ggml keeps the first on ties), with its sign.
    @inline(__always)
    private static func signedAbsMax(_ x: UnsafePointer<Float>) -> Float {
        var amax: Float = 0, maxv: Float = 0
        for j in 0..<32 where amax < abs(x[j]) {
            amax = abs(x[j])
            maxv = x[j]
        }
        return maxv
    }

    @inline(__always)
    private static func minMax(_ x: UnsafePointer<Float>) -> (Float, Float) {
        var mn = Float.greatestFiniteMagnitude, mx = -Float.greatestFiniteMagnitude
        for j in 0..<32 {
            if x[j] < mn { mn = x[j] }
            if x[j] > mx { mx = x[j] }
        }
        return (mn, mx)
    }

    /// quantize_row_q4_0_ref: d = max/-8, q = min(15, (int8)(x/d + 8.5)).
    @inline(__always)
    private static func q4_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let d = signedAbsMax(x) / -8
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        for j in 0..<16 {
            let q0 = UInt8(truncatingIfNeeded: min(15, Int(truncToInt8(x[j] * id + 8.5))))
            let q1 = UInt8(truncatingIfNeeded: min(15, Int(truncToInt8(x[j + 16] * id + 8.5))))
            y.storeBytes(of: q0 | (q1 << 4), toByteOffset: 2 + j, as: UInt8.self)
        }
    }

    /// quantize_row_q4_1_ref: d = (max-min)/15, m = min, q = min(15, (int8)((x-min)/d + 0.5)).
    @inline(__always)
    private static func q4_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (mn, mx) = minMax(x)
        let d = (mx - mn) / 15
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        storeHalf(mn, y, 2)
        for j in 0..<16 {
            let q0 = UInt8(truncatingIfNeeded: min(15, Int(truncToInt8((x[j] - mn) * id + 0.5))))
            let q1 = UInt8(truncatingIfNeeded: min(15, Int(truncToInt8((x[j + 16] - mn) * id + 0.5))))
            y.storeBytes(of: q0 | (q1 << 4), toByteOffset: 4 + j, as: UInt8.self)
        }
    }

    /// quantize_row_q5_0_ref: d = max/-16, q = min(31, (int8)(x/d + 16.5)); bit 4 of each q in qh.
    @inline(__always)
    private static func q5_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let d = signedAbsMax(x) / -16
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let q0 = UInt8(truncatingIfNeeded: min(31, Int(truncToInt8(x[j] * id + 16.5))))
            let q1 = UInt8(truncatingIfNeeded: min(31, Int(truncToInt8(x[j + 16] * id + 16.5))))
            y.storeBytes(of: (q0 & 0x0F) | ((q1 & 0x0F) << 4), toByteOffset: 6 + j, as: UInt8.self)
            qh |= UInt32((q0 & 0x10) >> 4) << UInt32(j)
            qh |= UInt32((q1 & 0x10) >> 4) << UInt32(j + 16)
        }
        y.storeBytes(of: qh.littleEndian, toByteOffset: 2, as: UInt32.self)
    }

    /// quantize_row_q5_1_ref: d = (max-min)/31, m = min, q = min(31, (int8)((x-min)/d + 0.5)).
    @inline(__always)
    private static func q5_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (mn, mx) = minMax(x)
        let d = (mx - mn) / 31
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y, 0)
        storeHalf(mn, y, 2)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let q0 = UInt8(truncatingIfNeeded: min(31, Int(truncToInt8((x[j] - mn) * id + 0.5))))
            let q1 = UInt8(truncatingIfNeeded: min(31, Int(truncToInt8((x[j + 16] - mn) * id + 0.5))))
            y.storeBytes(of: (q0 & 0x0F) | ((q1 & 0x0F) << 4), toByteOffset: 8 + j, as: UInt8.self)
            qh |= UInt32((q0 & 0x10) >> 4) << UInt32(j)
            qh |= UInt32((q1 & 0x10) >> 4) << UInt32(j + 16)
        }
        y.storeBytes(of: qh.littleEndian, toByteOffset: 4, as: UInt32.self)
    }
}

extension Float32Conversion {
    /// Float → IEEE binary16 bits, round to nearest even: subnormal results, overflow to ±inf, NaN →
    /// the quiet NaN 0x7E00 (sign kept). ggml's portable ggml_compute_fp32_to_fp16 (Maratyszcza's
    /// FP16 library), which agrees with F16C's vcvtps2ph for every non-NaN input.
    @inline(__always)
    public static func floatToHalf(_ f: Float) -> UInt16 {
        let scaleToInf = Float(bitPattern: 0x7780_0000)  // 0x1.0p+112
        let scaleToZero = Float(bitPattern: 0x0880_0000)  // 0x1.0p-110
        var base = (abs(f) * scaleToInf) * scaleToZero
        let w = f.bitPattern
        let shl1w = w &+ w
        let sign = w & 0x8000_0000
        var bias = shl1w & 0xFF00_0000
        if bias < 0x7100_0000 { bias = 0x7100_0000 }
        base = Float(bitPattern: (bias >> 1) &+ 0x0780_0000) + base
        let bits = base.bitPattern
        let expBits = (bits >> 13) & 0x0000_7C00
        let mantissaBits = bits & 0x0000_0FFF
        let nonsign = expBits &+ mantissaBits
        return UInt16(truncatingIfNeeded: (sign >> 16) | (shl1w > 0xFF00_0000 ? 0x7E00 : nonsign))
    }

    /// Float → bfloat16 bits as ggml_compute_fp32_to_bf16: NaN is kept and forced quiet, everything
    /// else rounds to nearest even (overflowing to ±inf).
    @inline(__always)
    public static func floatToBFloat16(_ f: Float) -> UInt16 {
        let u = f.bitPattern
        if u & 0x7FFF_FFFF > 0x7F80_0000 {
            return UInt16(truncatingIfNeeded: (u >> 16) | 64)
        }
        return UInt16(truncatingIfNeeded: (UInt64(u) + UInt64(0x7FFF + ((u >> 16) & 1))) >> 16)
    }
}
