//! SFTP codec: any bytes decode to a packet or an error, never a panic; a decoded packet
//! encodes (independently, see `encode_request`) to bytes that decode to the same packet; any
//! response encodes to one packet whose length field is exact and within the advertised limit.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use podsftp_sidecar::sftp::codec::{self, Attrs, NameEntry, Response, StatusCode};
use podsftp_sidecar_fuzz::encode_request;

fn attrs(u: &mut Unstructured<'_>) -> arbitrary::Result<Attrs> {
    Ok(Attrs { size: u.arbitrary()?, uid_gid: u.arbitrary()?, permissions: u.arbitrary()?, times: u.arbitrary()? })
}

fn response(u: &mut Unstructured<'_>) -> arbitrary::Result<Response> {
    let id = u.arbitrary()?;
    Ok(match u.int_in_range(0..=6)? {
        0 => Response::Status { id, code: StatusCode::Failure, message: u.arbitrary()? },
        1 => Response::Handle { id, handle: u.arbitrary()? },
        2 => Response::Data { id, data: Bytes::from(Vec::<u8>::arbitrary(u)?) },
        3 => {
            let mut entries = Vec::new();
            for _ in 0..u.arbitrary_len::<u8>()?.min(4096) {
                // A long name repeated stands for a directory of long names without a huge input.
                let repeat = usize::from(u.arbitrary::<u8>()?) + 1;
                let filename = Vec::<u8>::arbitrary(u)?.repeat(repeat);
                entries.push(NameEntry { longname: filename.clone(), filename, attrs: attrs(u)? });
            }
            Response::Name { id, entries }
        }
        4 => Response::Attrs { id, attrs: attrs(u)? },
        5 => {
            let count = usize::from(u.arbitrary::<u16>()?);
            let name: Vec<u8> = u.arbitrary()?;
            Response::UsersGroups { id, users: vec![name.clone(); count], groups: vec![name; count / 2] }
        }
        _ => Response::Limits {
            id,
            max_packet: u.arbitrary()?,
            max_read: u.arbitrary()?,
            max_write: u.arbitrary()?,
            max_handles: u.arbitrary()?,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = codec::decode(&Bytes::copy_from_slice(data)) {
        let encoded = encode_request(&packet);
        let again = codec::decode(&encoded).unwrap_or_else(|e| panic!("{packet:?} encoded as {encoded:?} does not decode: {e}"));
        assert_eq!(packet, again);
        assert_eq!(encode_request(&again), encoded);
    }

    if let Ok(response) = response(&mut Unstructured::new(data)) {
        let mut out = BytesMut::new();
        let payload = codec::encode(&response, &mut out);
        let len = out.len() - 4 + payload.as_ref().map_or(0, Bytes::len);
        assert_eq!(&out[..4], &(len as u32).to_be_bytes(), "{response:?}");
        assert!(len <= codec::MAX_PACKET as usize, "a {len}-byte packet");
    }
});
