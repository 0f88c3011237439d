//! `vxnet capture`: the frames the agent moves for a network, as pcap or one line each.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use vxnet_proto::{CaptureRequest, api_request::Kind as Req, api_response::Kind as Resp};

use super::client::{Api, Console};
use super::format::frame_summary;

/// A longer record (past pcap's customary 256 KiB snapshot limit) means a broken stream.
const MAX_RECORD: usize = 262_144;

/// `capture`: `count` frames (0: until interrupted) of `network`, written as pcap to `write`
/// (`-` for standard output) or, without it, summarized one line per frame.
pub fn run(
    api: &dyn Api,
    network: String,
    count: u64,
    write: Option<&str>,
    console: &mut Console,
) -> Result<ExitCode> {
    let (response, mut stream) =
        api.send_streaming(Req::Capture(CaptureRequest { network, count }))?;
    if let Some(Resp::Error(failure)) = response {
        bail!("Error response from daemon: {}", failure.message);
    }
    match write {
        Some("-") => {
            std::io::copy(&mut stream, console.out)?;
        }
        Some(path) => {
            let mut file =
                std::fs::File::create(path).with_context(|| format!("creating {path}"))?;
            let mut header = [0u8; 24];
            stream.read_exact(&mut header)?;
            file.write_all(&header)?;
            // Whole records, one write each: a capture stopped at any moment is a valid pcap.
            let mut frames = 0u64;
            let mut record = Vec::new();
            while read_record(&mut stream, &mut record)? {
                file.write_all(&record)?;
                frames += 1;
            }
            writeln!(console.err, "{path}: {frames} frames")?;
        }
        None => {
            let mut header = [0u8; 24];
            stream.read_exact(&mut header)?;
            let mut record = Vec::new();
            while read_record(&mut stream, &mut record)? {
                let secs = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
                let micros = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
                let summary = frame_summary(&record[16..]);
                writeln!(console.out, "{secs}.{micros:06} {summary}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one pcap record (16-byte header + frame) into `record`; false at the end of the stream.
fn read_record(stream: &mut impl Read, record: &mut Vec<u8>) -> Result<bool> {
    record.resize(16, 0);
    if stream.read_exact(&mut record[..16]).is_err() {
        return Ok(false);
    }
    let len = u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
    if len > MAX_RECORD {
        bail!("malformed capture stream (record of {len} bytes)");
    }
    record.resize(16 + len, 0);
    stream.read_exact(&mut record[16..])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::fake::{FakeApi, run as capture_with};

    #[test]
    fn frames_are_summarized_one_a_line() {
        let mut pcap = vec![0u8; 24];
        for (secs, micros) in [(1u32, 5u32), (2, 999_999)] {
            for word in [secs, micros, 4, 4] {
                pcap.extend(word.to_le_bytes());
            }
            pcap.extend([0xff; 4]);
        }
        let api = FakeApi::new([Resp::Ok(vxnet_proto::Empty {})]).with_stream(pcap);
        let done = capture_with(|c| run(&api, "db".into(), 2, None, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert_eq!(
            done.out,
            "1.000005 truncated frame, 4 bytes\n2.999999 truncated frame, 4 bytes\n"
        );
    }
}
