//! Summaries of a conversation's text, with no I/O: the deterministic extractive
//! summariser (TextRank over TF-IDF sentence vectors), the lexicon sentiment (VADER), and
//! the OpenAI-compatible provider in [`openai`].

pub mod openai;

use std::{collections::HashMap, sync::LazyLock};

use rust_stemmers::{Algorithm, Stemmer};
use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;
use utoipa::ToSchema;
use vader_parity::SentimentIntensityAnalyzer;

/// One message as the summariser sees it.
#[derive(Clone, Debug)]
pub struct Utterance {
    pub sender: String,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sentiment {
    Positive,
    Neutral,
    Negative,
}

/// What a summariser produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    pub summary: String,
    pub key_points: Vec<String>,
    pub sentiment: Sentiment,
    /// Mean VADER compound score of the messages, in [-1, 1].
    pub sentiment_score: f64,
}

/// Sentences of the summary text proper.
const SUMMARY_SENTENCES: usize = 3;
/// Upper bound on `key_points`.
pub const MAX_KEY_POINTS: usize = 5;
/// Longest key point, in characters; longer sentences are cut at a word boundary.
const MAX_POINT_CHARS: usize = 280;
/// Sentences this similar to one already picked are not picked again.
const REDUNDANCY: f64 = 0.7;
const DAMPING: f64 = 0.85;
const ITERATIONS: usize = 50;

static ANALYZER: LazyLock<SentimentIntensityAnalyzer> =
    LazyLock::new(SentimentIntensityAnalyzer::new);
static STEMMER: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));
static STOP_WORDS: LazyLock<std::collections::HashSet<&'static str>> =
    LazyLock::new(|| stop_words::get("en").iter().copied().collect());

/// Mean VADER compound over the messages, and its label (VADER's ±0.05 thresholds).
pub fn sentiment(messages: &[Utterance]) -> (Sentiment, f64) {
    if messages.is_empty() {
        return (Sentiment::Neutral, 0.0);
    }
    let total: f64 = messages
        .iter()
        .map(|m| ANALYZER.polarity_scores(&m.text).compound)
        .sum();
    let score = (total / messages.len() as f64 * 10_000.0).round() / 10_000.0;
    let label = if score >= 0.05 {
        Sentiment::Positive
    } else if score <= -0.05 {
        Sentiment::Negative
    } else {
        Sentiment::Neutral
    };
    (label, score)
}

/// A sentence of the conversation, with where it came from.
struct Sentence<'a> {
    text: &'a str,
    order: usize,
    /// Sparse TF-IDF vector: (term index, weight), sorted by term index, unit length.
    vector: Vec<(usize, f64)>,
}

fn terms(text: &str) -> Vec<String> {
    text.unicode_words()
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() > 1 && !STOP_WORDS.contains(w.as_str()))
        .filter(|w| !w.chars().all(|c| c.is_ascii_digit()))
        .map(|w| STEMMER.stem(&w).into_owned())
        .collect()
}

fn cosine(a: &[(usize, f64)], b: &[(usize, f64)]) -> f64 {
    let (mut i, mut j, mut dot) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                dot += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    dot
}

/// Splits the messages into sentences and gives each a unit TF-IDF vector
/// (sentences are the documents).
fn sentences(messages: &[Utterance]) -> Vec<Sentence<'_>> {
    let mut vocabulary: HashMap<String, usize> = HashMap::new();
    let mut raw: Vec<(&str, Vec<usize>)> = Vec::new();
    for message in messages {
        for text in message.text.unicode_sentences() {
            let text = text.trim();
            let ids: Vec<usize> = terms(text)
                .into_iter()
                .map(|t| {
                    let next = vocabulary.len();
                    *vocabulary.entry(t).or_insert(next)
                })
                .collect();
            if !ids.is_empty() {
                raw.push((text, ids));
            }
        }
    }
    let mut document_frequency = vec![0usize; vocabulary.len()];
    for (_, ids) in &raw {
        let mut seen = ids.clone();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            document_frequency[id] += 1;
        }
    }
    let n = raw.len() as f64;
    raw.into_iter()
        .enumerate()
        .map(|(order, (text, ids))| {
            let mut counts: HashMap<usize, f64> = HashMap::new();
            for id in ids {
                *counts.entry(id).or_default() += 1.0;
            }
            let mut vector: Vec<(usize, f64)> = counts
                .into_iter()
                .map(|(id, tf)| {
                    (
                        id,
                        tf * ((1.0 + n) / (1.0 + document_frequency[id] as f64)).ln_1p(),
                    )
                })
                .collect();
            vector.sort_unstable_by_key(|(id, _)| *id);
            let norm = vector.iter().map(|(_, w)| w * w).sum::<f64>().sqrt();
            if norm > 0.0 {
                vector.iter_mut().for_each(|(_, w)| *w /= norm);
            }
            Sentence {
                text,
                order,
                vector,
            }
        })
        .collect()
}

/// TextRank: PageRank over the sentence graph weighted by cosine similarity.
fn text_rank(sentences: &[Sentence<'_>]) -> Vec<f64> {
    let n = sentences.len();
    let mut edges: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in (i + 1)..n {
            let w = cosine(&sentences[i].vector, &sentences[j].vector);
            if w > 0.0 {
                edges[i].push((j, w));
                edges[j].push((i, w));
            }
        }
    }
    let out_weight: Vec<f64> = edges
        .iter()
        .map(|e| e.iter().map(|(_, w)| w).sum())
        .collect();
    let mut rank = vec![1.0 / n as f64; n];
    for _ in 0..ITERATIONS {
        let mut next = vec![(1.0 - DAMPING) / n as f64; n];
        for (i, neighbours) in edges.iter().enumerate() {
            for &(j, w) in neighbours {
                next[i] += DAMPING * rank[j] * w / out_weight[j];
            }
        }
        let delta: f64 = next.iter().zip(&rank).map(|(a, b)| (a - b).abs()).sum();
        rank = next;
        if delta < 1e-9 {
            break;
        }
    }
    rank
}

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_POINT_CHARS {
        return text.to_owned();
    }
    let cut: String = text.chars().take(MAX_POINT_CHARS).collect();
    let cut = cut
        .rsplit_once(char::is_whitespace)
        .map_or(cut.as_str(), |(head, _)| head);
    format!("{}…", cut.trim_end())
}

/// The extractive summary: the highest-ranked, mutually distinct sentences, told in the
/// order they were said. Deterministic: ties break towards the earlier sentence.
pub fn extractive(messages: &[Utterance]) -> Digest {
    let (sentiment, sentiment_score) = sentiment(messages);
    let sentences = sentences(messages);
    if sentences.is_empty() {
        return Digest {
            summary: if messages.is_empty() {
                "No messages yet.".into()
            } else {
                format!("{} messages without summarisable text.", messages.len())
            },
            key_points: Vec::new(),
            sentiment,
            sentiment_score,
        };
    }
    let rank = text_rank(&sentences);
    let mut order: Vec<usize> = (0..sentences.len()).collect();
    order.sort_by(|&a, &b| rank[b].total_cmp(&rank[a]).then(a.cmp(&b)));
    let wanted = MAX_KEY_POINTS.min(sentences.len().div_ceil(2));
    let mut picked: Vec<usize> = Vec::with_capacity(wanted);
    for i in order {
        if picked.len() == wanted {
            break;
        }
        let redundant = picked.iter().any(|&p| {
            sentences[p].text.eq_ignore_ascii_case(sentences[i].text)
                || cosine(&sentences[p].vector, &sentences[i].vector) > REDUNDANCY
        });
        if !redundant {
            picked.push(i);
        }
    }
    let mut summary_part: Vec<usize> = picked.iter().copied().take(SUMMARY_SENTENCES).collect();
    summary_part.sort_by_key(|&i| sentences[i].order);
    picked.sort_by_key(|&i| sentences[i].order);

    let mut speakers: Vec<&str> = Vec::new();
    for m in messages {
        if !speakers.contains(&m.sender.as_str()) {
            speakers.push(&m.sender);
        }
    }
    let who = match speakers.len() {
        1 => speakers[0].to_owned(),
        2 => format!("{} and {}", speakers[0], speakers[1]),
        n => format!("{}, {} and {} others", speakers[0], speakers[1], n - 2),
    };
    let mut summary = format!(
        "{} message{} from {who}.",
        messages.len(),
        if messages.len() == 1 { "" } else { "s" }
    );
    for &i in &summary_part {
        summary.push(' ');
        summary.push_str(&clip(sentences[i].text));
    }
    Digest {
        summary,
        key_points: picked.iter().map(|&i| clip(sentences[i].text)).collect(),
        sentiment,
        sentiment_score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(lines: &[(&str, &str)]) -> Vec<Utterance> {
        lines
            .iter()
            .map(|(s, t)| Utterance {
                sender: (*s).into(),
                text: (*t).into(),
            })
            .collect()
    }

    #[test]
    fn empty_is_neutral_and_has_no_points() {
        let d = extractive(&[]);
        assert_eq!(d.sentiment, Sentiment::Neutral);
        assert!(d.key_points.is_empty());
    }

    #[test]
    fn central_sentences_win_and_come_from_the_text() {
        let messages = said(&[
            (
                "ann",
                "The deployment of the billing service failed last night.",
            ),
            ("bob", "Which part of the billing deployment failed?"),
            (
                "ann",
                "The database migration for billing timed out during the deployment.",
            ),
            ("bob", "Nice weather today."),
            (
                "ann",
                "We should rerun the billing migration with a longer timeout.",
            ),
        ]);
        let d = extractive(&messages);
        assert!(!d.key_points.is_empty() && d.key_points.len() <= MAX_KEY_POINTS);
        for p in &d.key_points {
            assert!(messages.iter().any(|m| m.text.contains(p.as_str())), "{p}");
        }
        assert!(!d.key_points.iter().any(|p| p.contains("weather")));
        assert!(d.summary.starts_with("5 messages from ann and bob."));
        assert_eq!(d, extractive(&messages), "deterministic");
    }

    #[test]
    fn sentiment_sign_follows_the_text() {
        let happy = said(&[("a", "Thank you, this is wonderful! I love it.")]);
        let angry = said(&[("a", "This is terrible, awful and broken. I hate it.")]);
        assert_eq!(sentiment(&happy).0, Sentiment::Positive);
        assert_eq!(sentiment(&angry).0, Sentiment::Negative);
        assert!(sentiment(&angry).1 < 0.0 && sentiment(&happy).1 > 0.0);
    }

    #[test]
    fn long_sentences_are_clipped_at_a_word() {
        let long = "word ".repeat(200);
        let clipped = clip(long.trim());
        assert!(clipped.chars().count() <= MAX_POINT_CHARS + 1);
        assert!(clipped.ends_with('…'));
    }
}
