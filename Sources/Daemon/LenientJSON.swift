// LenientJSON: request bodies of the OpenAI and AUTOMATIC1111 routes, read the way those APIs' clients expect —
// unknown fields ignored (clients send many), known fields type-checked with an error naming the field.

import Foundation

/// Any JSON value, decoded and re-encoded as it came.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case unsigned(UInt64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .integer(i) }
        else if let u = try? c.decode(UInt64.self) { self = .unsigned(u) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .integer(let i): try c.encode(i)
        case .unsigned(let u): try c.encode(u)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

/// A field with the wrong type or value; the route turns it into its API's error shape.
public struct FieldError: Error, Sendable {
    /// The field at fault (nil: the body as a whole).
    public var field: String?
    public var message: String
    public init(_ field: String?, _ message: String) {
        self.field = field
        self.message = message
    }
}

/// A JSON object body with typed, optional field readers; `null` reads as absent.
public struct LenientJSON: Sendable {
    public let fields: [String: JSONValue]

    public init(_ body: [UInt8]) throws(FieldError) {
        let value: JSONValue
        do { value = try JSONDecoder().decode(JSONValue.self, from: Data(body)) } catch {
            throw FieldError(nil, "the body is not valid JSON")
        }
        guard case .object(let o) = value else { throw FieldError(nil, "the body must be a JSON object") }
        fields = o
    }

    public init(fields: [String: JSONValue]) { self.fields = fields }

    func present(_ key: String) -> JSONValue? {
        guard let v = fields[key], v != .null else { return nil }
        return v
    }

    public func string(_ key: String) throws(FieldError) -> String? {
        guard let v = present(key) else { return nil }
        guard case .string(let s) = v else { throw FieldError(key, "\(key) must be a string") }
        return s
    }

    public func bool(_ key: String) throws(FieldError) -> Bool? {
        guard let v = present(key) else { return nil }
        guard case .bool(let b) = v else { throw FieldError(key, "\(key) must be true or false") }
        return b
    }

    /// An integer; a number with no fractional part (7.0) counts.
    public func int(_ key: String) throws(FieldError) -> Int? {
        guard let v = present(key) else { return nil }
        switch v {
        case .integer(let i) where Int64(Int32.min)...Int64(Int32.max) ~= i: return Int(i)
        case .double(let d) where d.rounded() == d && abs(d) <= Double(Int32.max): return Int(d)
        default: throw FieldError(key, "\(key) must be an integer")
        }
    }

    public func double(_ key: String) throws(FieldError) -> Double? {
        guard let v = present(key) else { return nil }
        switch v {
        case .integer(let i): return Double(i)
        case .unsigned(let u): return Double(u)
        case .double(let d): return d
        default: throw FieldError(key, "\(key) must be a number")
        }
    }

    /// A seed 0…2⁶⁴−1; −1 means "pick one" when `minusOneIsRandom` (A1111), giving nil.
    public func seed(_ key: String, minusOneIsRandom: Bool) throws(FieldError) -> UInt64? {
        guard let v = present(key) else { return nil }
        switch v {
        case .integer(-1) where minusOneIsRandom: return nil
        case .integer(let i) where i >= 0: return UInt64(i)
        case .unsigned(let u): return u
        case .double(let d) where d >= 0 && d.rounded() == d && d < 1.8e19: return UInt64(d)
        case .double(-1) where minusOneIsRandom: return nil
        default:
            throw FieldError(key, "\(key) must be an integer 0…18446744073709551615" + (minusOneIsRandom ? " (or -1: random)" : ""))
        }
    }

    public func object(_ key: String) throws(FieldError) -> LenientJSON? {
        guard let v = present(key) else { return nil }
        guard case .object(let o) = v else { throw FieldError(key, "\(key) must be an object") }
        return LenientJSON(fields: o)
    }
}

extension JSONValue: ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByStringLiteral, ExpressibleByNilLiteral {
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(nilLiteral: ()) { self = .null }
}
