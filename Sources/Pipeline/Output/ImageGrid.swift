// ImageGrid: several equally sized RGB images tiled into one picture, row by row, like the
// image_grid helper diffusers users reach for (columns = ⌈√n⌉, rows as needed, unused cells black).

public struct ImageGrid {
    public let width: Int
    public let height: Int
    public let rgb: [UInt8]

    /// images: row-major width × height × 3 bytes each; columns: default ⌈√n⌉.
    public init(images: [[UInt8]], width: Int, height: Int, columns requested: Int? = nil) {
        let n = max(images.count, 1)
        var columns = max(1, requested ?? 1)
        if requested == nil {
            while columns * columns < n { columns += 1 }
        }
        let rows = (n + columns - 1) / columns
        self.width = columns * width
        self.height = rows * height
        var out = [UInt8](repeating: 0, count: self.width * self.height * 3)
        for (index, image) in images.enumerated() {
            let x0 = (index % columns) * width, y0 = (index / columns) * height
            for y in 0..<height {
                let src = y * width * 3
                let dst = ((y0 + y) * self.width + x0) * 3
                out.replaceSubrange(dst..<(dst + width * 3), with: image[src..<(src + width * 3)])
            }
        }
        rgb = out
    }
}
