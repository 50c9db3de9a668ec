//! Summaries from any OpenAI-compatible chat-completions endpoint.
//!
//! The model is asked for a JSON object `{summary, key_points}`. Anything else (a
//! timeout, an HTTP error, a body that is not that object) is a [`ProviderError`], and the
//! caller falls back to the extractive summary.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{MAX_KEY_POINTS, Utterance};

/// Characters of transcript sent to the model; the newest messages are kept.
const MAX_TRANSCRIPT_CHARS: usize = 24_000;
const MAX_SUMMARY_CHARS: usize = 4_000;

const INSTRUCTIONS: &str = "You summarise chat conversations. Answer with one JSON object \
and nothing else: {\"summary\": string (at most 5 sentences), \"key_points\": array of at \
most 5 short strings}. Use the language of the conversation.";

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// What the model produced.
#[derive(Debug, PartialEq)]
pub struct ModelSummary {
    pub summary: String,
    pub key_points: Vec<String>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    model: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    summary: String,
    #[serde(default)]
    key_points: Vec<String>,
}

impl Client {
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        model: String,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("colloquy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            model,
            timeout,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub async fn summarise(&self, messages: &[Utterance]) -> Result<ModelSummary, ProviderError> {
        let body = json!({
            "model": self.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": transcript(messages)},
            ],
        });
        let mut request = self.http.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(ProviderError::Status(response.status().as_u16()));
        }
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        parse(&bytes)
    }

    fn transport(&self, e: reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout(self.timeout)
        } else {
            ProviderError::Transport(e.without_url().to_string())
        }
    }
}

/// `sender: text` lines, newest kept when the whole would be too long.
fn transcript(messages: &[Utterance]) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut size = 0;
    for m in messages.iter().rev() {
        let line = format!("{}: {}", m.sender, m.text.replace('\n', " "));
        size += line.len() + 1;
        if size > MAX_TRANSCRIPT_CHARS && !lines.is_empty() {
            break;
        }
        lines.push(line);
    }
    lines.reverse();
    lines.join("\n")
}

/// Reads a chat-completions body whose first choice holds the JSON answer (possibly
/// inside a Markdown code fence, as some models write it).
pub fn parse(body: &[u8]) -> Result<ModelSummary, ProviderError> {
    let completion: Completion = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Malformed(format!("not a chat completion ({e})")))?;
    let content = completion
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or_else(|| ProviderError::Malformed("no choices[0].message.content".into()))?;
    let content = content.trim();
    let content = content
        .strip_prefix("```json")
        .or_else(|| content.strip_prefix("```"))
        .and_then(|c| c.strip_suffix("```"))
        .unwrap_or(content)
        .trim();
    let answer: Answer = serde_json::from_str(content)
        .map_err(|e| ProviderError::Malformed(format!("content is not the asked JSON ({e})")))?;
    let summary = answer.summary.trim().to_owned();
    if summary.is_empty() || summary.chars().count() > MAX_SUMMARY_CHARS {
        return Err(ProviderError::Malformed(
            "summary is empty or too long".into(),
        ));
    }
    let key_points = answer
        .key_points
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .take(MAX_KEY_POINTS)
        .collect();
    Ok(ModelSummary {
        summary,
        key_points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: &str) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"choices": [{"message": {"role": "assistant", "content": content}}]}),
        )
        .unwrap_or_default()
    }

    #[test]
    fn reads_plain_and_fenced_answers() {
        let plain = completion(r#"{"summary": "They agreed.", "key_points": ["a", " ", "b"]}"#);
        let fenced = completion(
            "```json\n{\"summary\": \"They agreed.\", \"key_points\": [\"a\", \"b\"]}\n```",
        );
        for body in [plain, fenced] {
            let s = parse(&body).expect("parses");
            assert_eq!(s.summary, "They agreed.");
            assert_eq!(s.key_points, vec!["a", "b"]);
        }
    }

    #[test]
    fn rejects_what_is_not_the_asked_shape() {
        for body in [
            b"not json".to_vec(),
            br#"{"choices": []}"#.to_vec(),
            completion("Sure! Here is a summary."),
            completion(r#"{"summary": ""}"#),
            completion(r#"{"summary": 3}"#),
        ] {
            assert!(matches!(parse(&body), Err(ProviderError::Malformed(_))));
        }
    }

    #[test]
    fn transcript_keeps_the_newest() {
        let messages: Vec<Utterance> = (0..2000)
            .map(|i| Utterance {
                sender: "u".into(),
                text: format!("message number {i}"),
            })
            .collect();
        let t = transcript(&messages);
        assert!(t.len() <= MAX_TRANSCRIPT_CHARS);
        assert!(t.ends_with("u: message number 1999"));
    }
}
