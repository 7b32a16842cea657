//! Reading the text files system operators import (office calendar, agency master data):
//! UTF-8 with or without BOM, or Big5 as older government files are.

/// Decodes `bytes` as UTF-8 if it is UTF-8, else as Big5. On failure, the 1-based line where
/// the encoding that read further stopped.
pub fn decode_utf8_or_big5(bytes: &[u8]) -> Result<String, usize> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let utf8_error = match std::str::from_utf8(bytes) {
        Ok(s) => return Ok(s.to_owned()),
        Err(e) => e.valid_up_to(),
    };
    let mut decoder = encoding_rs::BIG5.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(
        decoder
            .max_utf8_buffer_length_without_replacement(bytes.len())
            .unwrap_or(bytes.len() * 3),
    );
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut out, true);
    match result {
        encoding_rs::DecoderResult::InputEmpty => Ok(out),
        encoding_rs::DecoderResult::Malformed(bad, after) => {
            // The encoding that read further is the one the file was most likely meant to be in.
            let big5_error = read - usize::from(bad) - usize::from(after);
            let at = utf8_error.max(big5_error);
            Err(bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1)
        }
        // Capacity came from the decoder's own worst case, so the output cannot run out.
        encoding_rs::DecoderResult::OutputFull => Err(1),
    }
}
