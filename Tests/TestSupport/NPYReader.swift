// NPYReader: reads NumPy .npy float32 arrays (versions 1.0 to 3.0) for tests that compare against diffusers'
// dumps. Test support only; nothing shipped reads .npy files.

import Foundation
import Pipeline

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
