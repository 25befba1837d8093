//! calls — point-to-point voice and video calls. The hub carries the signaling (invite, ring,
//! answer, SDP and ICE candidates relayed in order between the two parties only), tracks who is
//! busy, mints TURN credentials and records every call; media flows peer to peer or via TURN.
//! `core` is the state machine (no IO).

pub mod core;
