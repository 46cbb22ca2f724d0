// CLIP byte-level BPE tokenizer: same ids as transformers' CLIPTokenizer (tokenizers-backed,
// transformers 5.x) for a folder with vocab.json + merges.txt (+ tokenizer_config.json).
import Foundation
import Synchronization

/// Why a tokenizer folder could not be loaded. Every case names the file.
public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    case missingFile(String)
    case malformed(file: String, reason: String)

    public var description: String {
        switch self {
        case .missingFile(let path): return "tokenizer: missing file \(path)"
        case .malformed(let file, let reason): return "tokenizer: malformed \(file): \(reason)"
        }
    }
}

/// The ids of one prompt, ready for the text encoder.
public struct TokenizedPrompt: Sendable, Equatable {
    /// `maxLength` ids: bos, tokens, eos, then pad ids. When truncated, eos is still last.
    public var ids: [Int32]
    /// Ids the prompt needs without truncation, bos and eos included.
    public var tokenCount: Int
    /// True when `tokenCount > maxLength`: the tail of the prompt was dropped.
    public var truncated: Bool
    /// False when the prompt is so long that counting stopped early (`tokenCount` is then a lower bound; the ids
    /// are exact all the same).
    public var tokenCountIsExact: Bool = true
}

/// CLIP BPE tokenizer (transformers `CLIPTokenizer` semantics).
///
/// Text pipeline, as tokenizers runs it: special-token strings are split out of the raw text,
/// then NFC, every whitespace run → " ", per-scalar lowercase; pre-tokenize with
/// `'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+` (whitespace dropped); each piece's UTF-8
/// bytes become byte-level symbols, the last with `</w>`; BPE merges by rank.
public struct CLIPTokenizer: Sendable {
    public let bosID: Int32
    public let eosID: Int32
    public let padID: Int32
    public let unkID: Int32
    /// model_max_length from tokenizer_config.json (77 when absent).
    public let modelMaxLength: Int
    /// Number of vocabulary entries.
    public var vocabularySize: Int { vocabulary.count }

    private let vocabulary: [String: Int32]
    /// (left id << 32 | right id) → (rank, merged id).
    private let merges: [UInt64: Merge]
    /// Vocabulary id of each byte's symbol, without and with `</w>`.
    private let byteIDs: [Int32]
    private let byteEndIDs: [Int32]
    /// Special-token strings matched in the raw text, longest first.
    private let specialTokens: [(text: [Unicode.Scalar], id: Int32)]
    /// Bytes of the longest vocabulary token (its `</w>` not counted): a piece's first N tokens lie within its
    /// first N × this many bytes.
    private let maxTokenBytes: Int
    private let cache = BPECache()

    struct Merge: Sendable {
        var rank: Int32
        var merged: Int32
    }

    /// Reads `vocab.json`, `merges.txt` and, when present, `tokenizer_config.json` and
    /// `special_tokens_map.json` from a diffusers `tokenizer/` folder.
    public init(directory: URL) throws {
        let vocabURL = directory.appendingPathComponent("vocab.json")
        let mergesURL = directory.appendingPathComponent("merges.txt")
        let configURL = directory.appendingPathComponent("tokenizer_config.json")
        let mapURL = directory.appendingPathComponent("special_tokens_map.json")
        let config = FileManager.default.fileExists(atPath: configURL.path) ? try Self.readJSONObject(configURL) : nil
        let map = FileManager.default.fileExists(atPath: mapURL.path) ? try Self.readJSONObject(mapURL) : nil
        let (specials, maxLength) = Self.settings(config: config, configLabel: configURL.path,
                                                  specialTokensMap: map, mapLabel: mapURL.path)
        try self.init(vocabURL: vocabURL, mergesURL: mergesURL, specialTokens: specials, modelMaxLength: maxLength)
    }

    /// A tokenizer from the contents of a tokenizer folder's files held in memory (e.g. a GGUF file's
    /// metadata): vocab.json text, merges.txt text and, optionally, tokenizer_config.json and
    /// special_tokens_map.json text. `source` prefixes error messages (e.g. "model.gguf: sdd.tokenizer").
    public init(vocabJSON: String, merges: String, tokenizerConfig: String? = nil, specialTokensMap: String? = nil,
                source: String) throws {
        let config = try tokenizerConfig.map { try Self.parseJSONObject(Data($0.utf8), label: "\(source) tokenizer_config.json") }
        let map = try specialTokensMap.map { try Self.parseJSONObject(Data($0.utf8), label: "\(source) special_tokens_map.json") }
        let (specials, maxLength) = Self.settings(config: config, configLabel: "\(source) tokenizer_config.json",
                                                  specialTokensMap: map, mapLabel: "\(source) special_tokens_map.json")
        try self.init(vocabObject: try Self.parseJSONObject(Data(vocabJSON.utf8), label: "\(source) vocab.json"),
                      vocabLabel: "\(source) vocab.json", mergesText: merges, mergesLabel: "\(source) merges.txt",
                      specialTokens: specials, modelMaxLength: maxLength)
    }

    /// Special-token names and model_max_length from tokenizer_config.json then special_tokens_map.json.
    private static func settings(config: [String: Any]?, configLabel: String, specialTokensMap map: [String: Any]?,
                                 mapLabel: String) -> (SpecialTokenNames, Int) {
        var specials = SpecialTokenNames()
        var maxLength = 77
        if let object = config {
            specials.update(from: object, file: configLabel)
            if let value = object["model_max_length"] as? NSNumber, value.doubleValue >= 1,
                value.doubleValue < 1_000_000
            {
                maxLength = value.intValue
            }
        }
        if let map { specials.update(from: map, file: mapLabel) }
        return (specials, maxLength)
    }

    /// Names of the special tokens (CLIP defaults: bos `<|startoftext|>`, the rest `<|endoftext|>`).
    public struct SpecialTokenNames: Sendable, Equatable {
        public var bos = "<|startoftext|>"
        public var eos = "<|endoftext|>"
        public var pad = "<|endoftext|>"
        public var unk = "<|endoftext|>"
        public init() {}

        mutating func update(from object: [String: Any], file: String) {
            func name(_ key: String) -> String? {
                if let s = object[key] as? String { return s }
                if let d = object[key] as? [String: Any], let s = d["content"] as? String { return s }
                return nil
            }
            bos = name("bos_token") ?? bos
            eos = name("eos_token") ?? eos
            pad = name("pad_token") ?? pad
            unk = name("unk_token") ?? unk
        }
    }

    /// Builds a tokenizer from explicit files.
    public init(
        vocabURL: URL, mergesURL: URL, specialTokens names: SpecialTokenNames = SpecialTokenNames(),
        modelMaxLength: Int = 77
    ) throws {
        let vocabObject = try Self.readJSONObject(vocabURL)
        guard let mergesData = FileManager.default.contents(atPath: mergesURL.path) else {
            throw TokenizerError.missingFile(mergesURL.path)
        }
        guard let mergesText = String(data: mergesData, encoding: .utf8) else {
            throw TokenizerError.malformed(file: mergesURL.path, reason: "not UTF-8")
        }
        try self.init(vocabObject: vocabObject, vocabLabel: vocabURL.path, mergesText: mergesText,
                      mergesLabel: mergesURL.path, specialTokens: names, modelMaxLength: modelMaxLength)
    }

    /// A parsed vocab.json object and merges.txt text; labels name them in errors.
    private init(
        vocabObject: [String: Any], vocabLabel: String, mergesText: String, mergesLabel: String,
        specialTokens names: SpecialTokenNames, modelMaxLength: Int
    ) throws {
        var vocabulary = [String: Int32](minimumCapacity: vocabObject.count)
        for (key, value) in vocabObject {
            guard let number = value as? NSNumber, let id = Int32(exactly: number.doubleValue), id >= 0 else {
                throw TokenizerError.malformed(file: vocabLabel, reason: "id of \"\(key)\" is not an integer")
            }
            vocabulary[key] = id
        }
        try self.init(vocabulary: vocabulary, vocabLabel: vocabLabel, mergesText: mergesText, mergesLabel: mergesLabel,
                      specialTokens: names, modelMaxLength: modelMaxLength)
    }

    /// The shared core: token → id and merges.txt text; labels name them in errors.
    init(
        vocabulary: [String: Int32], vocabLabel: String, mergesText: String, mergesLabel: String,
        specialTokens names: SpecialTokenNames, modelMaxLength: Int
    ) throws {
        func id(_ token: String, _ role: String) throws -> Int32 {
            guard let id = vocabulary[token] else {
                throw TokenizerError.malformed(file: vocabLabel, reason: "\(role) token \"\(token)\" not in vocabulary")
            }
            return id
        }
        bosID = try id(names.bos, "bos")
        eosID = try id(names.eos, "eos")
        padID = try id(names.pad, "pad")
        unkID = try id(names.unk, "unk")
        guard modelMaxLength >= 2 else {
            throw TokenizerError.malformed(file: vocabLabel, reason: "model_max_length \(modelMaxLength) < 2")
        }
        self.modelMaxLength = modelMaxLength

        let byteSymbols = Self.byteToUnicode()
        var byteIDs = [Int32]()
        var byteEndIDs = [Int32]()
        for b in 0..<256 {
            byteIDs.append(try id(byteSymbols[b], "byte"))
            byteEndIDs.append(try id(byteSymbols[b] + "</w>", "byte"))
        }
        self.byteIDs = byteIDs
        self.byteEndIDs = byteEndIDs

        var merges = [UInt64: Merge]()
        var rank: Int32 = 0
        for (lineIndex, line) in mergesText.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.hasSuffix("\r") ? line.dropLast() : line
            if trimmed.isEmpty || (lineIndex == 0 && trimmed.hasPrefix("#version")) { continue }
            let parts = trimmed.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, let a = vocabulary[String(parts[0])], let b = vocabulary[String(parts[1])],
                let merged = vocabulary[String(parts[0]) + String(parts[1])]
            else {
                throw TokenizerError.malformed(
                    file: mergesLabel, reason: "line \(lineIndex + 1) \"\(trimmed)\" is not a merge of vocabulary tokens")
            }
            let key = UInt64(UInt32(a)) << 32 | UInt64(UInt32(b))
            if merges[key] == nil { merges[key] = Merge(rank: rank, merged: merged) }
            rank += 1
        }
        self.merges = merges
        self.vocabulary = vocabulary
        maxTokenBytes = max(1, vocabulary.keys.map { $0.unicodeScalars.count - ($0.hasSuffix("</w>") ? 4 : 0) }.max() ?? 1)
        var specials = [(text: [Unicode.Scalar], id: Int32)]()
        for (text, id) in [(names.bos, bosID), (names.eos, eosID), (names.pad, padID), (names.unk, unkID)]
        where !text.isEmpty && !specials.contains(where: { String(String.UnicodeScalarView($0.text)) == text }) {
            specials.append((Array(text.unicodeScalars), id))
        }
        specialTokens = specials.sorted { $0.text.count > $1.text.count }
    }

    /// Tokenizes `text` to exactly `maxLength` ids (default: `modelMaxLength`): bos + tokens + eos,
    /// truncated to `maxLength` keeping eos last, padded with the pad id (diffusers'
    /// `padding="max_length", truncation=True`).
    ///
    /// The work is bounded whatever the text (a 60 KB single word, 30 000 combining marks): tokens are counted up
    /// to `countLimit(maxLength)`, and a piece longer than `pieceByteLimit(maxLength)` bytes is cut there before BPE
    /// — its first maxLength + 4 tokens lie inside the cut, so the ids kept are those of the whole text.
    public func encode(_ text: String, maxLength: Int? = nil) -> TokenizedPrompt {
        let length = max(maxLength ?? modelMaxLength, 2)
        let (tokens, complete) = tokens(text, limit: Self.countLimit(length),
                                        pieceByteLimit: (length + 4) * maxTokenBytes)
        let kept = min(tokens.count, length - 2)
        var ids = [Int32]()
        ids.reserveCapacity(length)
        ids.append(bosID)
        ids.append(contentsOf: tokens[0..<kept])
        ids.append(eosID)
        while ids.count < length { ids.append(padID) }
        return TokenizedPrompt(ids: ids, tokenCount: tokens.count + 2, truncated: tokens.count > length - 2,
                               tokenCountIsExact: complete)
    }

    /// Tokens counted at most for a prompt of `maxLength` ids: enough for every prompt a person writes to get its
    /// exact count in the truncation warning.
    static func countLimit(_ maxLength: Int) -> Int { max(1024, 4 * maxLength) }

    /// The ids of `text` without bos/eos, padding or truncation.
    public func tokenize(_ text: String) -> [Int32] { tokens(text, limit: nil, pieceByteLimit: nil).ids }

    /// The ids of `text`, stopping once `limit` are found and cutting pieces at `pieceByteLimit` bytes (then
    /// `complete` is false).
    private func tokens(_ text: String, limit: Int?, pieceByteLimit: Int?) -> (ids: [Int32], complete: Bool) {
        var out = [Int32]()
        var complete = true
        let scalars = Self.streamSafe(text.unicodeScalars)
        var start = 0
        var i = 0
        // Special-token strings are matched in the raw text before normalization (tokenizers'
        // added-token extraction); the text between them is tokenized normally.
        while i < scalars.count {
            if let limit, out.count >= limit { return (out, false) }
            if let special = specialTokens.first(where: { Self.hasPrefix(scalars, at: i, $0.text) }) {
                complete = appendPlain(scalars[start..<i], to: &out, limit: limit, pieceByteLimit: pieceByteLimit)
                    && complete
                out.append(special.id)
                i += special.text.count
                start = i
            } else {
                i += 1
            }
        }
        complete = appendPlain(scalars[start..<scalars.count], to: &out, limit: limit, pieceByteLimit: pieceByteLimit)
            && complete
        return (out, complete && (limit.map { out.count < $0 } ?? true))
    }

    /// Most non-starters (combining marks) kept in a row: UAX #15's stream-safe limit. Canonical ordering sorts a
    /// run of marks, so normalizing 30 000 of them in a row took seconds; no text a person writes has 30.
    static let maxNonStarters = 30

    /// The scalars with every run of combining marks cut to `maxNonStarters` (the rest of the run dropped).
    static func streamSafe(_ text: String.UnicodeScalarView) -> [Unicode.Scalar] {
        var out = [Unicode.Scalar]()
        var run = 0
        for scalar in text {
            if scalar.properties.canonicalCombiningClass.rawValue != 0 {
                run += 1
                if run > maxNonStarters { continue }
            } else {
                run = 0
            }
            out.append(scalar)
        }
        return out
    }

    /// Appends the tokens of text without special tokens; false when it stopped at `limit` or cut a piece.
    private func appendPlain(_ raw: ArraySlice<Unicode.Scalar>, to out: inout [Int32], limit: Int?,
                             pieceByteLimit: Int?) -> Bool {
        // In chunks of a few thousand scalars, each ending before whitespace (normalization and pre-tokenization
        // never join across it), so that text past the limit is never normalized.
        var chunkStart = raw.startIndex
        while chunkStart < raw.endIndex {
            var end = min(chunkStart + 4096, raw.endIndex)
            while end < raw.endIndex && !raw[end].properties.isWhitespace { end += 1 }
            if !appendChunk(raw[chunkStart..<end], to: &out, limit: limit, pieceByteLimit: pieceByteLimit) { return false }
            chunkStart = end
        }
        return true
    }

    private func appendChunk(_ raw: ArraySlice<Unicode.Scalar>, to out: inout [Int32], limit: Int?,
                             pieceByteLimit: Int?) -> Bool {
        let normalized = Self.normalize(String(String.UnicodeScalarView(raw)))
        for piece in Self.preTokenize(normalized) {
            if let limit, out.count >= limit { return false }
            let key = String(String.UnicodeScalarView(piece))
            if let cached = cache.get(key) {
                out.append(contentsOf: cached)
                continue
            }
            let bytes = Array(key.utf8)
            if let cut = pieceByteLimit, bytes.count > cut {
                // Tokens near the cut may differ from the whole piece's; the ones kept lie well before it.
                out.append(contentsOf: bpe(Array(bytes.prefix(cut))))
                return false
            }
            let ids = bpe(bytes)
            cache.set(key, ids)
            out.append(contentsOf: ids)
        }
        return true
    }

    /// NFC, whitespace runs → one space, per-scalar (context-free) lowercase, as tokenizers'
    /// `Sequence[NFC, Replace(\s+, " "), Lowercase]` does.
    static func normalize(_ text: String) -> [Unicode.Scalar] {
        var out = [Unicode.Scalar]()
        var inSpace = false
        for scalar in text.precomposedStringWithCanonicalMapping.unicodeScalars {
            if scalar.properties.isWhitespace {
                if !inSpace { out.append(" ") }
                inSpace = true
                continue
            }
            inSpace = false
            if scalar.properties.changesWhenLowercased {
                out.append(contentsOf: scalar.properties.lowercaseMapping.unicodeScalars)
            } else {
                out.append(scalar)
            }
        }
        return out
    }

    private static let contractions: [[Unicode.Scalar]] = ["s", "t", "re", "ve", "m", "ll", "d"].map {
        Array($0.unicodeScalars)
    }
    private static let specialPatterns: [[Unicode.Scalar]] = ["<|startoftext|>", "<|endoftext|>"].map {
        Array($0.unicodeScalars)
    }

    /// The pieces CLIP's split regex keeps (leftmost-first alternation, whitespace removed), then
    /// the GPT-2 split of ByteLevel (which only changes the `<|…|>` literals).
    static func preTokenize(_ s: [Unicode.Scalar]) -> [ArraySlice<Unicode.Scalar>] {
        var pieces = [ArraySlice<Unicode.Scalar>]()
        var i = 0
        let n = s.count
        scan: while i < n {
            for pattern in specialPatterns where hasPrefix(s, at: i, pattern) {
                // "<|", name, "|>": what the GPT-2 regex of ByteLevel makes of the literal.
                let end = i + pattern.count
                pieces.append(s[i..<(i + 2)])
                pieces.append(s[(i + 2)..<(end - 2)])
                pieces.append(s[(end - 2)..<end])
                i = end
                continue scan
            }
            let c = s[i]
            if c == "'" {
                for tail in contractions where hasPrefix(s, at: i + 1, tail) {
                    pieces.append(s[i..<(i + 1 + tail.count)])
                    i += 1 + tail.count
                    continue scan
                }
            }
            if isLetter(c) {
                var j = i + 1
                while j < n && isLetter(s[j]) { j += 1 }
                pieces.append(s[i..<j])
                i = j
            } else if isNumber(c) {
                pieces.append(s[i..<(i + 1)])
                i += 1
            } else if c.properties.isWhitespace {
                i += 1
            } else {
                var j = i + 1
                while j < n && !s[j].properties.isWhitespace && !isLetter(s[j]) && !isNumber(s[j]) { j += 1 }
                pieces.append(s[i..<j])
                i = j
            }
        }
        return pieces
    }

    private static func hasPrefix(_ s: [Unicode.Scalar], at i: Int, _ p: [Unicode.Scalar]) -> Bool {
        guard i + p.count <= s.count else { return false }
        for k in 0..<p.count where s[i + k] != p[k] { return false }
        return true
    }

    static func isLetter(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    static func isNumber(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    /// BPE over one piece's bytes: repeatedly merge every occurrence of the lowest-ranked pair.
    private func bpe(_ bytes: [UInt8]) -> [Int32] {
        if bytes.isEmpty { return [] }
        var symbols = bytes.map { byteIDs[Int($0)] }
        symbols[symbols.count - 1] = byteEndIDs[Int(bytes[bytes.count - 1])]
        while symbols.count > 1 {
            var best: Merge?
            var bestKey: UInt64 = 0
            for k in 0..<(symbols.count - 1) {
                let key = UInt64(UInt32(symbols[k])) << 32 | UInt64(UInt32(symbols[k + 1]))
                if let m = merges[key], m.rank < (best?.rank ?? .max) {
                    best = m
                    bestKey = key
                }
            }
            guard let merge = best else { break }
            var next = [Int32]()
            next.reserveCapacity(symbols.count)
            var k = 0
            while k < symbols.count {
                if k + 1 < symbols.count,
                    UInt64(UInt32(symbols[k])) << 32 | UInt64(UInt32(symbols[k + 1])) == bestKey
                {
                    next.append(merge.merged)
                    k += 2
                } else {
                    next.append(symbols[k])
                    k += 1
                }
            }
            symbols = next
        }
        return symbols
    }

    /// GPT-2's reversible byte → printable-character table.
    static func byteToUnicode() -> [String] {
        var table = [String](repeating: "", count: 256)
        var extra = 0
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            let code = printable ? b : 256 + extra
            if !printable { extra += 1 }
            table[b] = String(Character(Unicode.Scalar(UInt32(code))!))
        }
        return table
    }

    private static func readJSONObject(_ url: URL) throws -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw TokenizerError.missingFile(url.path)
        }
        return try parseJSONObject(data, label: url.path)
    }

    private static func parseJSONObject(_ data: Data, label: String) throws -> [String: Any] {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw TokenizerError.malformed(file: label, reason: "invalid JSON (\(error.localizedDescription))")
        }
        guard let dictionary = object as? [String: Any] else {
            throw TokenizerError.malformed(file: label, reason: "top level is not a JSON object")
        }
        return dictionary
    }
}

/// Memo of BPE results per pre-tokenized piece (bounded; cleared when full).
final class BPECache: Sendable {
    private let entries = Mutex<[String: [Int32]]>([:])
    private let capacity = 50_000

    func get(_ key: String) -> [Int32]? {
        entries.withLock { $0[key] }
    }

    func set(_ key: String, _ value: [Int32]) {
        entries.withLock { entries in
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[key] = value
        }
    }
}
