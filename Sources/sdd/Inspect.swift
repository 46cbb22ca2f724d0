// `sdd inspect`: what a model holds — components, tensor types and sizes, metadata, planned peak memory.

import ArgumentParser
import Foundation
import MMapWeights
import Pipeline

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a model's components, tensor types, sizes, metadata and planned peak memory.",
        discussion: """
            The planned peak memory is MemoryPlanner's estimate for a guided generation at the model's \
            default size with streamed weights: the largest two weight groups resident, skip connections \
            and live activations, and the VAE decode; `sdd generate --memory-budget` uses the same plan.
            """)

    @Argument(help: "A .gguf file or a diffusers model folder.")
    var path: String

    @Option(help: "GGUF only: write each tensor as sdd dequantizes it (F32) to DIR/<name>.npy, for tools/gguf --check.")
    var dumpDequantized: String?

    @Option(help: "With --dump-dequantized: only tensors whose name contains this text.")
    var match: String?

    func run() throws {
        do {
            let url = URL(fileURLWithPath: path)
            print(try ModelInspection(url: url).report())
            if let dir = dumpDequantized { try dump(url, to: URL(fileURLWithPath: dir, isDirectory: true)) }
        } catch {
            printError("sdd: error: \(error)")
            throw ExitCode.failure
        }
    }

    private func dump(_ url: URL, to dir: URL) throws {
        let gguf = try GGUFFile(url: url)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var n = 0
        for t in gguf.tensors where match.map({ t.name.contains($0) }) ?? true {
            try NPYWriter.write(float32: gguf.dequantized(t), shape: t.shape,
                                to: dir.appendingPathComponent(t.name + ".npy"))
            gguf.file.release(t.byteRange)
            n += 1
        }
        printError("sdd: inspect: wrote \(n) tensors to \(dir.path)")
    }
}
