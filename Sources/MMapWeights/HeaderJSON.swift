// HeaderJSON: a small, strict JSON parser for weight-file headers (safetensors, index.json).
// Own parser rather than JSONSerialization: bounded depth, exact integers, byte offsets in errors,
// and no bridging surprises (true → 1, 2.0 → 2) on hostile input.

/// A parsed JSON value. Objects keep their key order and duplicates (callers decide what a
/// duplicate means); numbers keep their source text so integers are read exactly.
indirect enum HeaderJSON: Sendable {
    case object([(key: String, value: HeaderJSON)])
    case array([HeaderJSON])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    /// A short name of the value's kind, for error messages ("an array", "a string").
    var kindName: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case .string: return "a string"
        case .number: return "a number"
        case .bool: return "a boolean"
        case .null: return "null"
        }
    }

    /// The value as a non-negative Int if it is an integer literal that fits, else nil.
    var nonNegativeInt: Int? {
        guard case .number(let text) = self else { return nil }
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return Int(text)  // nil on overflow
    }

    /// A compact rendering of the value for messages (numbers and strings verbatim, truncated).
    var brief: String {
        let s: String
        switch self {
        case .object: s = "{…}"
        case .array(let a): s = "[" + a.map(\.brief).joined(separator: ", ") + "]"
        case .string(let x): s = "\"\(x)\""
        case .number(let x): s = x
        case .bool(let b): s = b ? "true" : "false"
        case .null: s = "null"
        }
        return s.count > 80 ? String(s.prefix(77)) + "…" : s
    }

    struct ParseError: Error {
        let offset: Int
        let message: String
    }

    /// Parses one JSON value spanning `bytes` (surrounding whitespace allowed, nothing else).
    static func parse(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 32) throws(ParseError) -> HeaderJSON {
        var p = Parser(bytes: bytes, maxDepth: maxDepth)
        p.skipWhitespace()
        let v = try p.value(depth: 0)
        p.skipWhitespace()
        if p.pos != bytes.count {
            throw ParseError(offset: p.pos, message: "unexpected data after the JSON value")
        }
        return v
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        let maxDepth: Int
        var pos = 0

        init(bytes: UnsafeRawBufferPointer, maxDepth: Int) {
            self.bytes = bytes
            self.maxDepth = maxDepth
        }

        var atEnd: Bool { pos >= bytes.count }
        func peek() -> UInt8? { pos < bytes.count ? bytes[pos] : nil }

        mutating func skipWhitespace() {
            while let c = peek(), c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { pos += 1 }
        }

        func fail(_ message: String) -> ParseError { ParseError(offset: pos, message: message) }

        mutating func expect(_ c: UInt8) throws(ParseError) {
            guard peek() == c else {
                throw fail("expected '\(Character(Unicode.Scalar(c)))'" + (atEnd ? " but the header ended" : ""))
            }
            pos += 1
        }

        mutating func value(depth: Int) throws(ParseError) -> HeaderJSON {
            guard depth <= maxDepth else { throw fail("nesting deeper than \(maxDepth) levels") }
            guard let c = peek() else { throw fail("expected a value but the header ended") }
            switch c {
            case UInt8(ascii: "{"): return try object(depth: depth)
            case UInt8(ascii: "["): return try array(depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"):
                try literal("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try literal("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try literal("null")
                return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            default: throw fail("unexpected byte 0x\(String(c, radix: 16)) where a value should start")
            }
        }

        mutating func literal(_ word: StaticString) throws(ParseError) {
            let n = word.utf8CodeUnitCount
            guard pos + n <= bytes.count else { throw fail("invalid literal") }
            for i in 0..<n where bytes[pos + i] != word.utf8Start[i] { throw fail("invalid literal") }
            pos += n
        }

        mutating func object(depth: Int) throws(ParseError) -> HeaderJSON {
            try expect(UInt8(ascii: "{"))
            var members: [(key: String, value: HeaderJSON)] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "}") {
                pos += 1
                return .object(members)
            }
            while true {
                skipWhitespace()
                guard peek() == UInt8(ascii: "\"") else { throw fail("expected a string key in object") }
                let key = try string()
                skipWhitespace()
                try expect(UInt8(ascii: ":"))
                skipWhitespace()
                let v = try value(depth: depth + 1)
                members.append((key, v))
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    pos += 1
                    continue
                }
                try expect(UInt8(ascii: "}"))
                return .object(members)
            }
        }

        mutating func array(depth: Int) throws(ParseError) -> HeaderJSON {
            try expect(UInt8(ascii: "["))
            var items: [HeaderJSON] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                pos += 1
                return .array(items)
            }
            while true {
                skipWhitespace()
                items.append(try value(depth: depth + 1))
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    pos += 1
                    continue
                }
                try expect(UInt8(ascii: "]"))
                return .array(items)
            }
        }

        mutating func number() throws(ParseError) -> String {
            let start = pos
            if peek() == UInt8(ascii: "-") { pos += 1 }
            func digits(_ p: inout Parser) -> Int {
                var n = 0
                while let c = p.peek(), c >= 0x30 && c <= 0x39 {
                    p.pos += 1
                    n += 1
                }
                return n
            }
            let intStart = pos
            let nInt = digits(&self)
            guard nInt > 0 else { throw fail("invalid number") }
            if nInt > 1 && bytes[intStart] == UInt8(ascii: "0") { throw fail("invalid number (leading zero)") }
            if peek() == UInt8(ascii: ".") {
                pos += 1
                guard digits(&self) > 0 else { throw fail("invalid number") }
            }
            if let c = peek(), c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
                pos += 1
                if let s = peek(), s == UInt8(ascii: "+") || s == UInt8(ascii: "-") { pos += 1 }
                guard digits(&self) > 0 else { throw fail("invalid number") }
            }
            guard pos - start <= 400 else { throw fail("number literal too long") }
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        }

        mutating func hex4() throws(ParseError) -> UInt32 {
            guard pos + 4 <= bytes.count else { throw fail("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[pos]
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: throw fail("invalid \\u escape")
                }
                v = v << 4 | d
                pos += 1
            }
            return v
        }

        mutating func string() throws(ParseError) -> String {
            try expect(UInt8(ascii: "\""))
            var out: [UInt8] = []
            while true {
                guard let c = peek() else { throw fail("unterminated string") }
                pos += 1
                switch c {
                case UInt8(ascii: "\""):
                    guard let s = String(validating: out, as: UTF8.self) else {
                        throw fail("string is not valid UTF-8")
                    }
                    return s
                case UInt8(ascii: "\\"):
                    guard let e = peek() else { throw fail("unterminated escape") }
                    pos += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5C)
                    case UInt8(ascii: "/"): out.append(0x2F)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if scalar >= 0xD800 && scalar < 0xDC00 {
                            guard pos + 2 <= bytes.count, bytes[pos] == UInt8(ascii: "\\"),
                                bytes[pos + 1] == UInt8(ascii: "u")
                            else { throw fail("unpaired surrogate") }
                            pos += 2
                            let low = try hex4()
                            guard low >= 0xDC00 && low < 0xE000 else { throw fail("unpaired surrogate") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if scalar >= 0xDC00 && scalar < 0xE000 {
                            throw fail("unpaired surrogate")
                        }
                        guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                        out.append(contentsOf: Array(String(Character(u)).utf8))
                    default:
                        throw fail("invalid escape")
                    }
                default:
                    guard c >= 0x20 else { throw fail("control character in string") }
                    out.append(c)
                }
            }
        }
    }
}
