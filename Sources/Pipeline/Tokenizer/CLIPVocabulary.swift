// CLIPVocabulary: the CLIP BPE table every SD 1.x/2.x tokenizer uses, shipped inside sdd (merges in
// CKernels/CLIPMerges.c) for models that carry no tokenizer, such as single-file checkpoints.

import CKernels
import Foundation

/// CLIP's BPE table. The vocabulary follows from the merges the way CLIP builds it: the 256 byte symbols,
/// the same with `</w>`, one entry per merge, then `<|startoftext|>` and `<|endoftext|>` (49408 entries).
public enum CLIPVocabulary {
    /// merges.txt text, with its "#version: 0.2" header line.
    public static let mergesText: String = {
        let body = String(decoding: UnsafeRawBufferPointer(start: sdd_clip_merges(),
                                                           count: Int(sdd_clip_merges_length())), as: UTF8.self)
        return "#version: 0.2\n" + body
    }()

    /// The 49408 tokens in id order.
    public static let tokens: [String] = {
        // CLIP's bytes_to_unicode() order: the printable bytes (33–126, 161–172, 174–255) first, then the rest.
        let table = CLIPTokenizer.byteToUnicode()
        let printable = Array(33...126) + Array(161...172) + Array(174...255)
        let order = printable + (0..<256).filter { !printable.contains($0) }
        let bytes = order.map { table[$0] }
        var tokens = bytes + bytes.map { $0 + "</w>" }
        for line in mergesText.split(separator: "\n").dropFirst() {
            tokens.append(String(line.filter { $0 != " " }))
        }
        return tokens + ["<|startoftext|>", "<|endoftext|>"]
    }()

    /// vocab.json text (token → id).
    public static let vocabJSON: String = {
        var object = [String: Int]()
        for (i, t) in tokens.enumerated() { object[t] = i }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }()

    /// tokenizer_config.json text for a model max length of 77 and the given pad token: SD 1.x's CLIP pads
    /// with `<|endoftext|>`, SD 2.x's OpenCLIP with "!" (id 0).
    public static func tokenizerConfigJSON(padToken: String) -> String {
        let object: [String: Any] = [
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": true,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": padToken,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The standard CLIP tokenizer with the given pad token (model max length 77).
    public static func tokenizer(padToken: String = "<|endoftext|>") throws -> CLIPTokenizer {
        var names = CLIPTokenizer.SpecialTokenNames()
        names.pad = padToken
        return try CLIPTokenizer(vocabulary: vocabulary, vocabLabel: "sdd's CLIP BPE table", mergesText: mergesText,
                                 mergesLabel: "sdd's CLIP BPE merges", specialTokens: names, modelMaxLength: 77)
    }

    /// token → id.
    static let vocabulary: [String: Int32] = {
        var v = [String: Int32](minimumCapacity: tokens.count)
        for (i, t) in tokens.enumerated() { v[t] = Int32(i) }
        return v
    }()
}
