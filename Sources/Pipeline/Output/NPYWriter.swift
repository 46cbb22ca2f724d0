// NPYWriter / NPYReader: NumPy .npy (format 1.0) float32 arrays, byte-identical to np.save,
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

/// Reads `.npy` files holding little-endian float32 C-order arrays (versions 1.0, 2.0, 3.0).
public enum NPYReader {
    public static func readFloat32(from url: URL) throws -> (shape: [Int], data: [Float]) {
        let bytes: [UInt8]
        do { bytes = [UInt8](try Data(contentsOf: url)) } catch {
            throw OutputFileError(path: url.path, "cannot read: \(error.localizedDescription)")
        }
        do { return try decodeFloat32(bytes) } catch let e as OutputFileError {
            throw OutputFileError(path: url.path, e.message)
        }
    }

    public static func decodeFloat32(_ b: [UInt8]) throws -> (shape: [Int], data: [Float]) {
        func bad(_ m: String) -> OutputFileError { OutputFileError(path: "", m) }
        guard b.count >= 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else { throw bad("not an .npy file") }
        let major = b[6]
        let headerStart: Int
        let headerLength: Int
        switch major {
        case 1:
            headerStart = 10
            headerLength = Int(b[8]) | Int(b[9]) << 8
        case 2, 3:
            guard b.count >= 12 else { throw bad("truncated .npy header") }
            headerStart = 12
            headerLength = Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24
        default:
            throw bad(".npy version \(major) is not supported")
        }
        guard headerLength <= b.count - headerStart else { throw bad("truncated .npy header") }
        let header = String(decoding: b[headerStart..<(headerStart + headerLength)], as: UTF8.self)
        func value(_ key: String) -> Substring? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return header[r.upperBound...].drop { $0 == " " }
        }
        guard let descr = value("descr"), descr.hasPrefix("'<f4'") else {
            throw bad("only little-endian float32 ('<f4') arrays are supported")
        }
        guard let fortran = value("fortran_order"), fortran.hasPrefix("False") else {
            throw bad("Fortran-order arrays are not supported")
        }
        guard let shapeText = value("shape"), shapeText.hasPrefix("("), let close = shapeText.firstIndex(of: ")") else {
            throw bad("header has no shape")
        }
        var shape: [Int] = []
        for part in shapeText[shapeText.index(after: shapeText.startIndex)..<close].split(separator: ",") {
            let t = part.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            guard let n = Int(t), n >= 0 else { throw bad("bad shape entry \"\(t)\"") }
            shape.append(n)
        }
        var count = 1
        for d in shape {
            let (p, o) = count.multipliedReportingOverflow(by: d)
            guard !o else { throw bad("shape \(shape) is too large") }
            count = p
        }
        let dataStart = headerStart + headerLength
        guard count <= (b.count - dataStart) / 4, b.count - dataStart == count * 4 else {
            throw bad("data is \(b.count - dataStart) bytes; shape \(shape) of float32 needs \(count * 4)")
        }
        var data = [Float](repeating: 0, count: count)
        for i in 0..<count {
            let o = dataStart + 4 * i
            let bits = UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
            data[i] = Float(bitPattern: bits)
        }
        return (shape, data)
    }
}
