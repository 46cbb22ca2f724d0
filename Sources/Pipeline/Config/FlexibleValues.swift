// Decoding helpers for diffusers config.json values that may be a scalar or a per-level list.

/// A config value diffusers accepts either as one value for every level or as a list with one per level.
public enum PerLevel<Value: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    case all(Value)
    case each([Value])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let list = try? container.decode([Value].self) {
            self = .each(list)
        } else {
            self = .all(try container.decode(Value.self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .all(let v): try container.encode(v)
        case .each(let list): try container.encode(list)
        }
    }

    /// One value per level; a list of the wrong length is an error naming `field`.
    public func expanded(levels: Int, field: String, file: String) throws -> [Value] {
        switch self {
        case .all(let v): return Array(repeating: v, count: levels)
        case .each(let list):
            guard list.count == levels else {
                throw PipelineError.badConfig(file: file, field: field,
                                              reason: "has \(list.count) entries for \(levels) levels")
            }
            return list
        }
    }
}

/// `sample_size` may be an int or [height, width].
public enum SampleSize: Codable, Sendable, Equatable {
    case square(Int)
    case rect(height: Int, width: Int)

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let list = try? container.decode([Int].self), list.count == 2 {
            self = .rect(height: list[0], width: list[1])
        } else {
            self = .square(try container.decode(Int.self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .square(let s): try container.encode(s)
        case .rect(let h, let w): try container.encode([h, w])
        }
    }

    public var height: Int {
        switch self {
        case .square(let s): return s
        case .rect(let h, _): return h
        }
    }

    public var width: Int {
        switch self {
        case .square(let s): return s
        case .rect(_, let w): return w
        }
    }
}
