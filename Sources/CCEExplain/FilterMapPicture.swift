// `cce explain`, part 2, the picture: a FilterMap drawn as SVG, two panels side by side
// (vocabulary in id order, then sorted), one cell per row segment.

import Foundation

extension FilterMap {
    /// Two panels side by side, unsorted and sorted, at the engine's granularity: one cell
    /// per row segment (token x VB block), filled when kept, white when skipped. Runs of
    /// kept cells in a row are drawn as one rectangle of a single path (a small file).
    public func svg() -> String {
        let cw = 5, ch = 1, gap = 70.0, left = 50.0, top = 78.0
        let pw = Double(blocks * cw), ph = Double(n * ch)
        let w = left + 2 * pw + gap + 30, h = top + ph + 64
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(w / 2))" y="20" text-anchor="middle" font-size="14">Backward row segments kept by gradient filtering, eps = 2^\(Int(Foundation.log2(eps))), LM-like N = \(n), D = \(d), V = \(v)</text>

        """
        for (k, p) in [unsorted, sorted].enumerated() {
            let x0 = left + Double(k) * (pw + gap)
            let segFrac = 100 * Double(p.keptSegments) / Double(n * blocks)
            let t = pictureTiles(p)
            s += "<text x=\"\(f(x0 + pw / 2))\" y=\"44\" text-anchor=\"middle\">\(p.sorted ? "after sorting by average logit" : "vocabulary in id order")</text>\n"
            s += "<text x=\"\(f(x0 + pw / 2))\" y=\"62\" text-anchor=\"middle\">kept \(String(format: "%.1f", segFrac))% of row segments, \(String(format: "%.1f", 100 * Double(t.kept) / Double(t.total)))% of \(pictureRows)-token tiles</text>\n"
            s += "<rect x=\"\(f(x0))\" y=\"\(f(top))\" width=\"\(f(pw))\" height=\"\(f(ph))\" fill=\"white\" stroke=\"#333\"/>\n"
            var path = ""
            for i in 0..<n {
                var j = 0
                while j < blocks {
                    guard p.kept[i * blocks + j] else { j += 1; continue }
                    var e = j
                    while e < blocks && p.kept[i * blocks + e] { e += 1 }
                    path += "M\(Int(x0) + j * cw) \(Int(top) + i * ch)h\((e - j) * cw)v\(ch)h-\((e - j) * cw)z"
                    j = e
                }
            }
            s += "<path fill=\"#1f4e9c\" d=\"\(path)\"/>\n"
            s += "<text x=\"\(f(x0 + pw / 2))\" y=\"\(f(top + ph + 18))\" text-anchor=\"middle\">\(blocks) vocabulary blocks of \(vocabBlock) \(p.sorted ? "(sorted order)" : "(id order)")</text>\n"
            s += "<text x=\"\(f(x0 - 8))\" y=\"\(f(top + ph / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 \(f(x0 - 8)) \(f(top + ph / 2)))\">\(n) tokens</text>\n"
        }
        s += "<text x=\"\(f(left))\" y=\"\(f(h - 14))\">blue: row segment (token x \(vocabBlock) entries) kept and recomputed in the backward; white: skipped</text>\n"
        return s + "</svg>\n"
    }
}
