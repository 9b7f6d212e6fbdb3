//! Chat with the packed templates: `olmort --messages` in every format, several eos ids,
//! `olmort chat` driven through a pipe (replies, KV reuse across turns, a full context,
//! Ctrl-C), and the session API's reuse of the KV cache against a fresh computation.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use olmo_e2e::{bin, chat_cases, describe, fixtures, pack, run, ChatCase, ChatCases, Scratch};
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::generation::sampling::SamplingParams;
use olmort::generation::session::{ChatFormat, ChatOptions, ChatSession, Conversation, StopReason};
use olmort::text::chat_template::Message;
use olmort::{Model, RunState};

/// transformers' rendering of a fixture conversation with the generation prompt.
fn expected<'c>(cases: &'c ChatCases<Message>, model: &str, conversation: &str) -> &'c ChatCase {
    cases
        .cases
        .iter()
        .find(|c| {
            c.model == model && c.template == "default" && c.conversation == conversation && !c.tools && c.add_generation_prompt
        })
        .unwrap()
}

fn pack_chat(model: &str, scratch: &Scratch) -> String {
    let out = scratch.path(&format!("{model}.bin"));
    pack(&fixtures().join("chat").join(model), &out);
    out.to_str().unwrap().to_string()
}

fn write_messages(scratch: &Scratch, name: &str, messages: &[Message]) -> String {
    let path = scratch.path(name);
    std::fs::write(&path, serde_json::to_string(messages).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

fn olmort(args: &[&str]) -> (String, String) {
    let out = run("olmort", args, &[]);
    assert!(out.status.success(), "olmort {args:?}: {}", describe(&out));
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs olmort expecting a refusal: non-zero exit, one line on stderr, no panic.
fn refused(args: &[&str], stdin: &str) -> String {
    let out = with_stdin(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "olmort {args:?} should fail: {}", describe(&out));
    assert_eq!(stderr.lines().count(), 1, "olmort {args:?}: {}", describe(&out));
    assert!(stderr.starts_with("olmort: ") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Runs olmort with `stdin` piped in.
fn with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(bin("olmort"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal may exit before reading its input: a broken pipe here is that, not a failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing olmort's stdin: {e}");
    }
    child.wait_with_output().unwrap()
}

/// The token ids of a trace's lines, in order.
fn trace_tokens(trace: &str) -> Vec<u32> {
    trace
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn messages_run_in_every_format_with_the_rendered_prompt() {
    let cases = chat_cases::<Message>();
    let scratch = Scratch::new("chat-messages");
    for (model, conversation) in [("chatml", "system_user"), ("olmo2", "multi_turn"), ("chatml", "lone_markers")] {
        let blob = pack_chat(model, &scratch);
        let case = expected(&cases, model, conversation);
        let ids = case.ids.as_ref().unwrap();
        let text = case.text.as_ref().unwrap();
        let file = write_messages(&scratch, &format!("{model}-{conversation}.json"), &cases.conversations[conversation]);
        // The trace feeds the prompt's ids: transformers' sanitized ids.
        let steps = (ids.len() + 3).to_string();
        let (trace, _) = olmort(&[&blob, "--messages", &file, "--steps", &steps]);
        let fed = trace_tokens(&trace);
        assert_eq!(&fed[..ids.len()], &ids[..], "{model}/{conversation}");
        if conversation == "lone_markers" {
            // A special-token spelling in the user's text: the ids keep it as text.
            assert_ne!(Some(ids), case.unsanitized_ids.as_ref());
        }
        // Running text: the rendered conversation (the marker characters transformers
        // keeps in it are not encoded), then the reply.
        let (out, _) = olmort(&[&blob, "--messages", &file, "--format", "text", "--max-tokens", "4"]);
        let text = text.replace(['\u{F0000}', '\u{F0001}'], "");
        assert!(out.starts_with(&text) && out.len() > text.len(), "{model}/{conversation}: {out:?}");
        // JSON lines: the prompt's positions, then up to 4 new tokens.
        let (jsonl, _) = olmort(&[&blob, "--messages", &file, "--format", "jsonl", "--max-tokens", "4"]);
        let steps: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let tokens: Vec<u32> = steps.iter().map(|s| s["token"].as_u64().unwrap() as u32).collect();
        assert_eq!(&tokens[..ids.len()], &ids[..]);
        let generated = steps.iter().filter(|s| s["generated"] == true).count();
        assert!((1..=4).contains(&generated), "{jsonl}");
    }
    // Standard input works as a file does.
    let blob = pack_chat("chatml", &scratch);
    let case = expected(&cases, "chatml", "user");
    let messages = serde_json::to_string(&cases.conversations["user"]).unwrap();
    let out = with_stdin(&[&blob, "--messages", "-", "--steps", &case.ids.as_ref().unwrap().len().to_string()], &messages);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(&trace_tokens(&String::from_utf8_lossy(&out.stdout)), case.ids.as_ref().unwrap());
}

/// The chatml fixture with other eos ids: a scratch folder that links the fixture's
/// files and writes its own generation_config.json.
fn chatml_with_eos(scratch: &Scratch, eos: &[u32], tag: &str) -> String {
    let dir = scratch.path(&format!("chatml-eos-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let source = fixtures().join("chat/chatml");
    for entry in std::fs::read_dir(&source).unwrap() {
        let name = entry.unwrap().file_name();
        if name != "generation_config.json" {
            std::os::unix::fs::symlink(source.join(&name).canonicalize().unwrap(), dir.join(&name)).unwrap();
        }
    }
    std::fs::write(dir.join("generation_config.json"), format!("{{\"eos_token_id\": {eos:?}}}")).unwrap();
    let out = scratch.path(&format!("chatml-eos-{tag}.bin"));
    pack(&dir, &out);
    out.to_str().unwrap().to_string()
}

/// The new tokens of a JSON-lines run.
fn generated(jsonl: &str) -> Vec<u32> {
    jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|s| s["generated"] == true)
        .map(|s| s["next"].as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_eos_id_stops_generation() {
    let cases = chat_cases::<Message>();
    let scratch = Scratch::new("chat-eos");
    let file = write_messages(&scratch, "m.json", &cases.conversations["system_user"]);
    let blob = pack_chat("chatml", &scratch);
    let (jsonl, _) = olmort(&[&blob, "--messages", &file, "--format", "jsonl", "--max-tokens", "8", "--ignore-eos"]);
    let free = generated(&jsonl);
    // A token of the free-running reply that did not come up before it.
    let k = (2..free.len()).find(|&k| !free[..k].contains(&free[k])).expect("a new token in the reply");
    let stop = free[k];
    for (tag, eos) in [("last", vec![100265, stop]), ("first", vec![stop, 100265, 100257])] {
        let blob = chatml_with_eos(&scratch, &eos, tag);
        for format in ["jsonl", "text"] {
            let (out, _) = olmort(&[&blob, "--messages", &file, "--format", format, "--max-tokens", "8"]);
            if format == "jsonl" {
                // The eos token is the last step's choice and ends the run.
                assert_eq!(generated(&out), &free[..=k], "eos {eos:?}");
            } else {
                let text = expected(&cases, "chatml", "system_user").text.as_ref().unwrap();
                assert!(out.starts_with(text.as_str()), "{out}");
            }
        }
        let (out, _) = olmort(&[&blob, "--messages", &file, "--format", "jsonl", "--max-tokens", "8", "--ignore-eos"]);
        assert_eq!(generated(&out), free, "--ignore-eos runs on past {eos:?}");
    }
}

/// `prompt N tokens (R reused, P run in ...)` of each status line: (N, R, P).
/// A chat turn's prompt tokens, how many of them came from the cache, how many ran.
type Turn = (usize, usize, usize);

fn turn_counts(stderr: &str) -> Vec<Turn> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("olmort: prompt "))
        .map(|l| {
            let n: Vec<usize> = l
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .take(3)
                .map(|s| s.parse().unwrap())
                .collect();
            (n[0], n[1], n[2])
        })
        .collect()
}

/// The reply `olmort --messages` gives to `messages` (text format, prompt removed).
fn reply_to(blob: &str, scratch: &Scratch, messages: &[Message], max_tokens: &str, rendered: &str) -> String {
    let file = write_messages(scratch, "turn.json", messages);
    let (out, _) = olmort(&[blob, "--messages", &file, "--format", "text", "--max-tokens", max_tokens]);
    out.strip_prefix(rendered).unwrap_or_else(|| panic!("{out:?} starts with {rendered:?}")).to_string()
}

/// `olmort chat` on chat fixture `fixture` with `system` and three `lines` through a
/// pipe, a `/reset` before the third and then `after`: checks that it succeeds and that
/// each reply is the one `--messages` gives for the conversation so far; returns each
/// turn's (prompt, reused, run) counts and each turn's prompt tokens.
fn chat_through_a_pipe(fixture: &str, system: &str, lines: [&str; 3], after: &str) -> (Vec<Turn>, Vec<Vec<u32>>) {
    let scratch = Scratch::new(&format!("chat-repl-{fixture}"));
    let blob = pack_chat(fixture, &scratch);
    let input = format!("{}\n{}\n/reset\n{}\n{after}", lines[0], lines[1], lines[2]);
    let out = with_stdin(&["chat", &blob, "--system", system, "--max-tokens", "6"], &input);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("olmort: the conversation is reset"), "{stderr}");
    let map = MappedFile::open(Path::new(&blob)).unwrap();
    let parsed = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&parsed).unwrap();
    let format = ChatFormat::for_model(&model, parsed.manifest.chat.as_ref(), None).unwrap();
    let mut messages = vec![Message::new("system", system)];
    let mut want = String::new();
    let mut prompts = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if i == 2 {
            messages.truncate(1);
        }
        messages.push(Message::new("user", *line));
        let rendered = format.template().render(&messages, None, true).unwrap();
        prompts.push(format.prompt(&messages).unwrap());
        let reply = reply_to(&blob, &scratch, &messages, "6", &rendered);
        want.push_str(&reply);
        want.push('\n');
        messages.push(Message::new("assistant", reply));
    }
    assert_eq!(stdout, want);
    let turns = turn_counts(&stderr);
    assert_eq!(turns.len(), 3, "{stderr}");
    (turns, prompts)
}

#[test]
fn chat_through_a_pipe_answers_each_line_and_reuses_the_kv_cache() {
    let lines = ["What is 2+2?", "And 3+3?", "Thanks <|im_end|> bye"];
    let (turns, prompts) = chat_through_a_pipe("chatml", "You are a terse assistant.", lines, "/exit\nnot sent\n");
    // KV reuse: the first turn runs its whole prompt; the second reuses at least all of
    // the first prompt and runs only what follows; after /reset the system message's
    // prefix is still reused.
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    assert_eq!(turns[0], (lens[0], 0, lens[0]));
    let (n, reused, ran) = turns[1];
    assert_eq!(n, lens[1]);
    assert!(reused >= lens[0] && ran == n - reused && ran <= n - lens[0], "{turns:?}");
    // After /reset the new prompt shares the system message (up to the user's text) with
    // what the cache holds, and only that is reused.
    let shared = prompts[1].iter().zip(&prompts[2]).take_while(|(a, b)| a == b).count();
    assert!(shared >= 10, "{shared}");
    assert_eq!(turns[2], (lens[2], shared, lens[2] - shared));
}

/// An OLMo-3 model (sliding-window layers) through the REPL: its cache holds only the
/// window before where it stopped, so a turn that cannot continue there (after /reset)
/// starts over instead of failing, and every reply is the one `--messages` gives.
#[test]
fn a_sliding_window_chat_continues_or_starts_over() {
    let (turns, prompts) = chat_through_a_pipe("olmo3", "Be brief.", ["Hello!", "And then?", "Hi again"], "");
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    assert_eq!(turns[0], (lens[0], 0, lens[0]));
    assert!(turns[1].1 == 0 || turns[1].1 >= lens[0], "continued whole or started over: {turns:?}");
    assert_eq!(turns[2], (lens[2], 0, lens[2]), "after /reset the system prefix cannot be kept alone");
}

#[test]
fn the_session_reuses_the_kv_cache_and_replies_as_a_fresh_one() {
    let scratch = Scratch::new("chat-session");
    let blob = pack_chat("chatml", &scratch);
    let map = MappedFile::open(Path::new(&blob)).unwrap();
    let parsed = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&parsed).unwrap();
    let session = |system: &str| {
        let format = ChatFormat::for_model(&model, parsed.manifest.chat.as_ref(), None).unwrap();
        let options = ChatOptions { sampling: SamplingParams::default(), max_tokens: Some(8) };
        let state = RunState::new(&model, 128).unwrap();
        ChatSession::new(&model, state, format, Conversation::new(Some(system)), options)
    };
    let stop = AtomicBool::new(false);
    let mut chat = session("Be brief.");
    let mut streamed = Vec::new();
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for (turn, line) in ["Hi!", "Tell me more.", "Once more, please."].iter().enumerate() {
        let kv_before = chat.kv_tokens().to_vec();
        let mut reply = Vec::new();
        let stats = chat.send(line, &stop, &mut |id, _| {
            reply.push(id);
            Ok(())
        });
        let stats = stats.unwrap();
        let prompt = chat.format().prompt(&chat.conversation().messages()[..chat.conversation().messages().len() - 1]).unwrap();
        // The cache held the previous prompt and the reply tokens fed back; the turn ran
        // exactly the prompt's tokens after its common prefix with them.
        let common = kv_before.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
        assert_eq!((stats.prompt_tokens, stats.reused, stats.prefilled), (prompt.len(), common, prompt.len() - common));
        if turn > 0 {
            // At least the whole previous prompt came from the cache (the template strips
            // the replies, which can end the common prefix where a reply starts).
            assert!(stats.reused >= prompts.last().map_or(0, Vec::len), "turn {turn}: {stats:?}");
        }
        prompts.push(prompt.clone());
        let fed = match stats.stop {
            StopReason::Eos(_) => reply.len(),
            _ => reply.len() - 1,
        };
        assert_eq!(chat.kv_tokens(), [&prompt[..], &reply[..fed]].concat());
        assert_eq!(stats.generated, reply.len());
        streamed.push(reply);
    }
    // A fresh session given the whole conversation at once replies the same: the KV
    // cache carried over from earlier turns gives the logits a full prompt run gives.
    let messages = chat.conversation().messages().to_vec();
    let mut earlier = Conversation::new(Some("Be brief."));
    for m in &messages[1..messages.len() - 2] {
        earlier.push(m.clone());
    }
    let format = ChatFormat::for_model(&model, parsed.manifest.chat.as_ref(), None).unwrap();
    let options = ChatOptions { sampling: SamplingParams::default(), max_tokens: Some(8) };
    let mut fresh = ChatSession::new(&model, RunState::new(&model, 128).unwrap(), format, earlier, options);
    let mut reply = Vec::new();
    let stats = fresh.send(&messages[messages.len() - 2].content, &stop, &mut |id, _| {
        reply.push(id);
        Ok(())
    });
    let stats = stats.unwrap();
    assert_eq!(stats.reused, 0);
    assert_eq!(reply, streamed[2]);
    assert_eq!(fresh.conversation().messages(), &messages[..]);
}

#[test]
fn a_full_context_drops_the_oldest_turns() {
    let scratch = Scratch::new("chat-full");
    let blob = pack_chat("chatml", &scratch);
    let input = "First question here\nSecond question here\nThird question here\nFourth question here\n";
    let out = with_stdin(&["chat", &blob, "--context", "48", "--max-tokens", "8"], input);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let turns = turn_counts(&stderr);
    assert_eq!(turns.len(), 4, "{stderr}");
    assert!(stderr.contains("olmort: the context of 48 positions was full: dropped the oldest 2 messages"), "{stderr}");
    // Every prompt left room for its reply.
    assert!(turns.iter().all(|&(n, _, _)| n + 8 <= 48), "{turns:?}");
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 4);

    // A message longer than the context is refused and the chat goes on.
    let long = "word ".repeat(60);
    let out = with_stdin(&["chat", &blob, "--context", "48", "--max-tokens", "8"], &format!("{long}\nshort\n"));
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("olmort: the conversation needs") && stderr.contains("shorten the message"), "{stderr}");
    assert_eq!(turn_counts(&stderr).len(), 1, "{stderr}");
}

#[test]
fn ctrl_c_stops_the_reply_not_the_chat() {
    let scratch = Scratch::new("chat-interrupt");
    let blob = pack_chat("chatml", &scratch);
    let mut child = Command::new(bin("olmort"))
        .args(["chat", &blob])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"Tell me a long story.\n").unwrap();
    stdin.flush().unwrap();
    // The reply has begun: interrupt it, then ask for another turn and leave.
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    stdin.write_all(b"Short one?\n/exit\n").unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(stderr.contains("olmort: [stopped]"), "{stderr}");
    let turns = turn_counts(&stderr);
    assert_eq!(turns.len(), 2, "{stderr}");
    // The stopped reply ended early (the first turn's status shows fewer tokens than a
    // reply to the end of the context), and the next turn reused the first prompt.
    let first_reply: usize = stderr
        .lines()
        .find_map(|l| l.split("reply ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(first_reply < 128 - turns[0].0 - 1, "{stderr}");
    assert!(turns[1].1 >= turns[0].0, "{turns:?}");
}

/// A thinking model (its prompt opens `<think>`) through the REPL: the reply's reasoning
/// goes to standard error, its answer to standard output; together they are the reply
/// `--messages` gives.
#[test]
fn a_thinking_model_s_reasoning_goes_to_standard_error() {
    let scratch = Scratch::new("chat-think");
    let blob = pack_chat("olmo3_think", &scratch);
    let out = with_stdin(&["chat", &blob, "--max-tokens", "12"], "Why is the sky blue?\n");
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, stderr) = (String::from_utf8(out.stdout.clone()).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned());
    let map = MappedFile::open(Path::new(&blob)).unwrap();
    let parsed = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&parsed).unwrap();
    let format = ChatFormat::for_model(&model, parsed.manifest.chat.as_ref(), None).unwrap();
    let messages = [Message::new("user", "Why is the sky blue?")];
    let rendered = format.template().render(&messages, None, true).unwrap();
    let raw = reply_to(&blob, &scratch, &messages, "12", &rendered);
    let (reasoning, answer) = olmort::text::reasoning::split_reply(&raw, true);
    assert!(!reasoning.is_empty(), "{raw:?}");
    assert_eq!(stdout, format!("{answer}\n"));
    assert!(stderr.contains(&reasoning) && !stderr.contains("\x1b["), "{stderr:?} holds {reasoning:?}, not dimmed in a pipe");
}

#[test]
fn chat_refusals_are_one_line() {
    let scratch = Scratch::new("chat-refusals");
    let tiny = scratch.path("tiny.bin");
    pack(&fixtures().join("tiny"), &tiny);
    let tiny = tiny.to_str().unwrap();
    let blob = pack_chat("chatml", &scratch);
    let messages = write_messages(&scratch, "m.json", &[Message::new("user", "hi")]);
    let bad = scratch.path("bad.json");
    std::fs::write(&bad, r#"[{"role": "user"}]"#).unwrap();
    let bad = bad.to_str().unwrap();
    for (args, stdin, why) in [
        (vec![tiny, "--messages", &messages], "", "has no chat template"),
        (vec![&blob, "--messages", bad], "", "message 0: missing field `content`"),
        (vec![&blob, "--messages", "-"], "not json", "standard input: not JSON"),
        (vec![&blob, "--messages", &messages, "--chat-template", "rag"], "", "no chat template named \"rag\""),
        (vec![&blob, "--chat-template", "tool_use", "--prompt", "x"], "", "--chat-template applies to --messages"),
        (vec![&blob, "--messages", &messages, "--prompt", "x"], "", "give the prompt once"),
        (vec![&blob, "--messages", &messages, "--special"], "", "--special applies to a text prompt"),
        (vec!["chat", tiny], "hi\n", "has no chat template"),
        (vec!["chat", &blob, "--context", "0"], "", "--context 0 is not in 1..=128"),
        (vec!["chat", &blob, "--context", "129"], "", "--context 129 is not in 1..=128"),
        (vec!["chat", &blob, "--max-tokens", "0"], "", "--max-tokens 0 leaves no room"),
        (vec!["chat", &blob, "--bogus"], "", "unexpected argument '--bogus'"),
        (vec!["chat", &blob, "--threads", "100000"], "", "--threads 100000 is more than"),
        (vec!["chat", "/nonexistent.bin"], "", "/nonexistent.bin"),
    ] {
        let e = refused(&args, stdin);
        assert!(e.contains(why), "{args:?}: {e}");
    }
    // A line that is not UTF-8 is skipped with one line; the chat goes on.
    let mut child = Command::new(bin("olmort"))
        .args(["chat", &blob, "--max-tokens", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\xff\xfe\nhello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("olmort: that line is not UTF-8 text; nothing was sent"), "{stderr}");
    assert_eq!(turn_counts(&stderr).len(), 1, "{stderr}");
}
