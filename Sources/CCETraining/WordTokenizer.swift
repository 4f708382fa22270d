// Word-level tokenizer for `cce train --corpus FILE`.
//
// Splitting: text is lowercased; a word is a maximal run of letters, digits and
// apostrophes; every other non-space character is a token of its own (punctuation);
// whitespace separates and is dropped. The vocabulary holds `<unk>` (id 0) and the
// most frequent words, at most `capacity` entries in all; frequency ties are broken by the
// word's spelling, so the same text always gives the same ids. Words outside the
// vocabulary become `<unk>`.

/// A word-level vocabulary built from a text.
public struct WordTokenizer: Sendable {
    public static let unknown = "<unk>"
    /// id → word; id 0 is `<unk>`.
    public let words: [String]
    let ids: [String: Int32]

    /// Splits `text` into words and punctuation marks (see the file header).
    public static func split(_ text: String) -> [String] {
        var out: [String] = []
        var word = ""
        for ch in text.lowercased() {
            if ch.isLetter || ch.isNumber || ch == "'" || ch == "’" {
                word.append(ch)
            } else {
                if !word.isEmpty { out.append(word); word = "" }
                if !ch.isWhitespace { out.append(String(ch)) }
            }
        }
        if !word.isEmpty { out.append(word) }
        return out
    }

    /// The `capacity − 1` most frequent pieces of `pieces`, plus `<unk>`. Throws for a
    /// capacity below 2 (the vocabulary must hold `<unk>` and at least one word).
    public init(pieces: [String], capacity: Int) throws {
        guard capacity >= 2 else {
            throw TrainingError.invalidOption("--vocab must be >= 2 (<unk> and one word; got \(capacity))")
        }
        var counts: [String: Int] = [:]
        for p in pieces { counts[p, default: 0] += 1 }
        counts[WordTokenizer.unknown] = nil
        let ranked = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        words = [WordTokenizer.unknown] + ranked.prefix(capacity - 1).map(\.key)
        var ids: [String: Int32] = [:]
        for (i, w) in words.enumerated() { ids[w] = Int32(i) }
        self.ids = ids
    }

    public var count: Int { words.count }

    /// The id of each piece (0 for words outside the vocabulary).
    public func encode(_ pieces: [String]) -> [Int32] { pieces.map { ids[$0] ?? 0 } }

    /// Pieces joined by spaces.
    public func decode(_ tokens: [Int32]) -> String { tokens.map { words[Int($0)] }.joined(separator: " ") }
}
