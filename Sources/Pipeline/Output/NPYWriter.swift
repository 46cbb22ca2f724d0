// NPYWriter: NumPy .npy (format 1.0) float32 arrays, byte-identical to np.save,
// for dumping latents and intermediate tensors to compare against diffusers.

import Foundation

/// Writes little-endian float32 arrays as `.npy` files exactly as `numpy.save` (numpy 2.x) does.
public enum NPYWriter {
    /// The complete header (magic, version 1.0, length, dict, padding, newline) for a C-order
    /// `<f4` array of `shape`: the dict, numpy's growth-axis spaces, then spaces so the data starts
    /// at a multiple of 64 bytes, then "\n". Throws if it would not fit a v1.0 header.
    public static func header(shape: [Int]) throws -> [UInt8] {
        let dims: String
        switch shape.count {
        case 0: dims = "()"
        case 1: dims = "(\(shape[0]),)"
        default: dims = "(" + shape.map(String.init).joined(separator: ", ") + ")"
        }
        var dict = "{'descr': '<f4', 'fortran_order': False, 'shape': \(dims), }"
        // numpy reserves room to grow axis 0 in place: GROWTH_AXIS_MAX_DIGITS (21) − len(repr(shape[0])).
        if let first = shape.first { dict += String(repeating: " ", count: max(0, 21 - String(first).count)) }
        let text = Array(dict.utf8)
        let hlen = text.count + 1  // + "\n"
        let padding = 64 - ((6 + 2 + 2 + hlen) % 64)  // numpy pads a full 64 when already aligned
        let total = hlen + padding
        guard total <= Int(UInt16.max) else {
            throw OutputFileError(path: "", "shape \(shape) is too long for an .npy v1.0 header")
        }
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        out += [UInt8(total & 0xFF), UInt8(total >> 8)]
        out += text
        out += [UInt8](repeating: 0x20, count: padding)
        out.append(0x0A)
        return out
    }

    /// The `.npy` file bytes for `data` with `shape` (`data.count` must equal the product of `shape`).
    public static func encode(float32 data: [Float], shape: [Int]) throws -> [UInt8] {
        guard shape.allSatisfy({ $0 >= 0 }), shape.reduce(1, *) == data.count else {
            throw OutputFileError(path: "", "\(data.count) values do not fill shape \(shape)")
        }
        var out = try header(shape: shape)
        out.reserveCapacity(out.count + data.count * 4)
        for v in data {
            let b = v.bitPattern.littleEndian
            out += [UInt8(b & 0xFF), UInt8((b >> 8) & 0xFF), UInt8((b >> 16) & 0xFF), UInt8(b >> 24)]
        }
        return out
    }

    /// Writes `data` (row-major, `shape`) to `url` atomically (temp file, fsync, rename).
    /// Throws `OutputFileError` naming the path.
    public static func write(float32 data: [Float], shape: [Int], to url: URL) throws {
        let bytes: [UInt8]
        do { bytes = try encode(float32: data, shape: shape) } catch let e as OutputFileError {
            throw OutputFileError(path: url.path, e.message)
        }
        try OutputFiles.writeAtomically(bytes, to: url)
    }
}
