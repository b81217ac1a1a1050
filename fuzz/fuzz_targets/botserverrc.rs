//! The `botserverrc` / `zuliprc` reader, through the same layering and validation as
//! `--botserverrc`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zulip_listeners::fuzzing::botserverrc_config;

fuzz_target!(|data: &[u8]| {
    // The file is read with `read_to_string`: bytes that are not UTF-8 never get this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match botserverrc_config(text) {
        Ok(config) => {
            assert!(!config.bots.is_empty());
            for (name, bot) in &config.bots {
                assert!(!name.is_empty());
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                );
                assert!(bot.email.contains('@'));
                assert!(!bot.token.expose().trim().is_empty());
                let _ = format!("{bot:?}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
