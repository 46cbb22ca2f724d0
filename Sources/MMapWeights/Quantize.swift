// Quantize: F32 → the stored weight types through the type table's encoders (CKernels' Quantize.c), bit-exact
// with ggml's reference quantize_row_*_ref (and PyPI gguf.quants); and Swift's F32 → F16 / BF16 rounding.
import CKernels

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
    /// Callers check `type.isWritable` first (sdd convert and the GGUF writer refuse the read-only types by name).
    public static func quantize(_ source: UnsafeBufferPointer<Float>, to type: TensorType,
                                into destination: UnsafeMutableRawBufferPointer) {
        let n = source.count
        precondition(n % type.blockSize == 0 && destination.count == type.byteCount(elements: n),
                     "Quantizer: \(destination.count) bytes for \(n) \(type.name) values")
        precondition(type.isWritable, "Quantizer: \(type.name) is read only")
        guard n > 0, let x = source.baseAddress, let y = destination.baseAddress else { return }
        let status = ck_quantize(type.rawValue, x, Int64(n), y)
        precondition(status == 0, "Quantizer: the type table refused \(n) \(type.name) values")
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
