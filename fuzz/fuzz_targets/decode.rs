//! Feeds arbitrary bytes to the MQTT decoder at every protocol level. Whatever decodes must re-encode and
//! decode to the same packet; nothing may panic.
#![no_main]

use bytes::BytesMut;
use cicada::protocol::{decode, encode, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let version = match selector % 3 {
        0 => ProtocolVersion::V31,
        1 => ProtocolVersion::V311,
        _ => ProtocolVersion::V5,
    };
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(packet)) = decode(&mut buf, version, 1 << 16) {
        let mut out = BytesMut::new();
        encode(&packet, version, &mut out).expect("a decoded packet re-encodes");
        let again = decode(&mut out, version, usize::MAX).expect("re-encoded packet decodes");
        assert_eq!(again, Some(packet));
    }
});
