// PipelineError: every failure a user can cause while loading a model or asking for an image.

import Foundation

/// Errors that name the file, field, tensor or option at fault.
public enum PipelineError: Error, CustomStringConvertible, Equatable {
    case missingFile(path: String, what: String)
    case badConfig(file: String, field: String, reason: String)
    case unsupported(file: String, feature: String)
    case badWeights(component: String, reason: String)
    case invalidRequest(String)
    case cancelled

    public var description: String {
        switch self {
        case .missingFile(let path, let what): return "\(path): missing (\(what))"
        case .badConfig(let file, let field, let reason): return "\(file): field \"\(field)\" \(reason)"
        case .unsupported(let file, let feature): return "\(file): \(feature) is not supported"
        case .badWeights(let component, let reason): return "\(component) weights: \(reason)"
        case .invalidRequest(let message): return message
        case .cancelled: return "generation cancelled"
        }
    }
}
