// TensorType: the storage types a weight can have, by ggml's type ids (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
// Q5_1; read-only k-quants Q4_K, Q5_K, Q6_K). Everything about a type — block shape, name, encoder, decoder —
// is its row of CKernels' type table (TypeTraits.c), which the C dispatchers read too.
import CKernels

/// A weight storage type with ggml's numbering; its properties come from its row of the type table.
public enum TensorType: UInt32, Sendable, CaseIterable, Codable {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    /// k-quants (super-blocks of 256): read from stable-diffusion.cpp / llama.cpp files, never written.
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case bf16 = 30

    /// This type's row of the table (TypeTraitsTests checks every case has one).
    private var traits: ck_type_traits {
        guard let row = ck_type_traits_of(rawValue) else {
            preconditionFailure("TensorType \(rawValue) has no row in CKernels' type table")
        }
        return row.pointee
    }

    /// Elements per block (1 for the float types, 32 or 256 for the quantized ones).
    public var blockSize: Int { Int(traits.block_elements) }

    /// Bytes per block.
    public var blockBytes: Int { Int(traits.block_bytes) }

    /// Whether values share per-block scales (the ggml quantizations), rather than each being a float.
    public var isQuantized: Bool { traits.is_quantized != 0 }

    /// The lower-case name users type and ggml prints (q8_0, f16 …).
    public var name: String { String(cString: traits.name) }

    /// Whether sdd can write this type (`sdd convert --type`): the table has an encoder for it.
    public var isWritable: Bool { traits.from_float != nil }

    /// llama.cpp's LLAMA_FTYPE for a file whose main type is this one (GGUF's `general.file_type`).
    public var llamaFileType: UInt32 { traits.file_type }

    /// Largest |x − dequantize(quantize(x))| over a block as a fraction of the block's largest |x| (values and
    /// F16 scales in the normal range), or nil for a type sdd does not write.
    public var roundTripBound: Float? { isWritable ? traits.round_trip_bound : nil }

    public init?(name: String) {
        guard let t = TensorType.allCases.first(where: { $0.name == name.lowercased() }) else { return nil }
        self = t
    }

    /// Bytes needed for `count` elements (count must be a multiple of blockSize), or nil on overflow.
    public func byteCount(elements count: Int) -> Int? {
        guard count >= 0, count % blockSize == 0 else { return nil }
        let (bytes, overflow) = (count / blockSize).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }

    /// Decodes `count` elements (a multiple of blockSize) starting at `source` into `destination` with the
    /// table's decoder: exactly ggml's dequantize_row_* values, on the fastest path this CPU has.
    public func dequantize(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>) {
        precondition(count % blockSize == 0, "dequantize: \(count) values are not whole \(name) blocks")
        let status = ck_dequantize(rawValue, source, Int64(count), destination)
        precondition(status == 0, "TensorType \(rawValue) has no row in CKernels' type table")
    }
}
