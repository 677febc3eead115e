//! Client commands: HELLO (HS256, `exp` required) → HELLO_ACK and the automatic
//! `user:{sub}`; SUBSCRIBE → SUBSCRIBED (every syntactically valid name granted);
//! PING → PONG. Replies are queued on the connection and written together at the
//! end of the read that brought the commands.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};
use xcord_common::channels::{parse_subscription, valid_channel};
use xcord_common::claims::Claims;

use crate::proto::{self, Command};
use crate::server::{Phase, Server};

impl Server {
    pub fn on_command(&mut self, slot: u32, text: &[u8]) {
        let Some(cmd) = proto::command(text) else {
            return self.close_with(slot, 4002);
        };
        let ready = self.conns[slot as usize].phase == Phase::Ready;
        match cmd {
            Command::Hello(token) if !ready => self.hello(slot, token.as_deref()),
            Command::Hello(_) => self.close_with(slot, 4005),
            _ if !ready => self.close_with(slot, 4003),
            Command::Subscribe(channels) => self.subscribe(slot, &channels),
            Command::Ping => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                proto::pong(now, &mut self.json, &mut self.conns[slot as usize].out);
            }
            Command::BadPayload => self.error(slot, "BAD_PAYLOAD", "bad payload", None),
            Command::Unknown => self.error(slot, "UNKNOWN_TYPE", "unknown type", None),
        }
    }

    fn error(&mut self, slot: u32, code: &str, message: &str, channel: Option<&str>) {
        let out = &mut self.conns[slot as usize].out;
        proto::error(code, message, channel, &mut self.json, out);
    }

    fn hello(&mut self, slot: u32, token: Option<&str>) {
        let claims = token
            .and_then(|t| jsonwebtoken::decode::<Claims>(t, &self.key, &self.validation).ok())
            .map(|d| d.claims)
            .filter(|c| valid_channel(&c.sub));
        let Some(claims) = claims else {
            return self.close_with(slot, 4004);
        };
        let user: Box<str> = format!("user:{}", claims.sub).into();
        self.index.add(&user, slot);
        let c = &mut self.conns[slot as usize];
        c.subs.push(user);
        c.phase = Phase::Ready;
        let session = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let hb = self.cfg.heartbeat_ms;
        proto::hello_ack(&session, hb, &claims.sub, &mut self.json, &mut c.out);
    }

    fn subscribe(&mut self, slot: u32, channels: &[Cow<'_, str>]) {
        let mut granted: Vec<&str> = Vec::with_capacity(channels.len());
        for raw in channels {
            let Some(sub) = parse_subscription(raw) else {
                self.error(slot, "INVALID_CHANNEL", "invalid channel name", Some(raw));
                continue;
            };
            let c = &mut self.conns[slot as usize];
            if !c.subs.iter().any(|s| **s == *sub.name) {
                self.index.add(&sub.name, slot);
                c.subs.push(sub.name.into_boxed_str());
            }
            if !granted.contains(&&**raw) {
                granted.push(raw);
            }
        }
        let out = &mut self.conns[slot as usize].out;
        proto::subscribed(&granted, &mut self.json, out);
    }
}
