// WeightsError: the one error type of MMapWeights. Every message names the file and, where it
// applies, the tensor and the header field, so a user can tell which download is broken and how.

/// An error reading a weight file. `description` is a complete, user-facing sentence such as
/// `vae/diffusion_pytorch_model.safetensors: tensor "decoder.conv_in.weight": data_offsets [10, 2000] run past
/// the end of the data section (1200 bytes)`.
public struct WeightsError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A stable classification, for callers that react differently (e.g. "not found" vs "corrupt").
    public enum Code: String, Sendable, Equatable {
        /// The path does not exist.
        case fileNotFound
        /// The path exists but is a directory or other non-regular file.
        case notARegularFile
        /// The file exists but cannot be opened or mapped (permissions, I/O).
        case unreadable
        /// The file's header or structure is malformed (truncated, bad JSON, bad field).
        case malformed
        /// A requested tensor is not in the file.
        case missingTensor
        /// A tensor's shape differs from what the caller expected.
        case shapeMismatch
        /// A tensor's dtype cannot be used for the requested operation.
        case unsupportedDType
        /// The file format is not supported (e.g. PyTorch pickle weights).
        case unsupportedFormat
        /// No weights file was found where one was expected.
        case noWeights
    }

    public let code: Code
    /// The file (or directory) the error is about, as a path.
    public let file: String
    /// The tensor the error is about, if any.
    public let tensor: String?
    /// What is wrong, without the file/tensor prefix.
    public let detail: String

    public init(_ code: Code, file: String, tensor: String? = nil, _ detail: String) {
        self.code = code
        self.file = file
        self.tensor = tensor
        self.detail = detail
    }

    public var description: String {
        if let tensor {
            return "\(file): tensor \"\(tensor)\": \(detail)"
        }
        return "\(file): \(detail)"
    }
}
