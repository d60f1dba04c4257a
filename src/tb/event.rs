//! The few `tensorboard.Event` protobufs a run writes, encoded by hand: four messages do not
//! justify a protobuf code generator. Field numbers are those of tensorboard/compat/proto/
//! event.proto, summary.proto and tensor.proto (the same as TensorFlow's).

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `tensorboard.DataType.DT_STRING`.
const DT_STRING: u64 = 7;
/// `tensorboard.DataClass.DATA_CLASS_TENSOR`: without it TensorBoard's Rust data server leaves a
/// text series unread.
const DATA_CLASS_TENSOR: u64 = 2;
/// `SessionLog.SessionStatus.START`.
const SESSION_START: u64 = 1;

/// One message being encoded; fields are appended in the order written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn key(&mut self, field: u32, wire: u32) {
        self.raw_varint(u64::from(field << 3 | wire));
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn varint(mut self, field: u32, v: u64) -> Msg {
        self.key(field, VARINT);
        self.raw_varint(v);
        self
    }

    fn double(mut self, field: u32, v: f64) -> Msg {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn float(mut self, field: u32, v: f32) -> Msg {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(mut self, field: u32, b: &[u8]) -> Msg {
        self.key(field, LEN);
        self.raw_varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn msg(self, field: u32, m: Msg) -> Msg {
        self.bytes(field, &m.0)
    }
}

/// `Event { wall_time = 1, step = 2 }`; the step is an int64, so a u64 up to 2^63 keeps its bits.
fn event(wall_time: f64, step: u64) -> Msg {
    Msg::default().double(1, wall_time).varint(2, step)
}

/// The first record of every event file: `Event.file_version = 3`.
pub fn file_version(wall_time: f64) -> Vec<u8> {
    Msg::default()
        .double(1, wall_time)
        .bytes(3, b"brain.Event:2")
        .0
}

/// `Event.summary = 5` holding one `Summary.Value = 1` { tag = 1, simple_value = 2 }.
pub fn scalar(wall_time: f64, step: u64, tag: &str, value: f32) -> Vec<u8> {
    let value = Msg::default().bytes(1, tag.as_bytes()).float(2, value);
    event(wall_time, step)
        .msg(5, Msg::default().msg(1, value))
        .0
}

/// A text summary as `tf.summary.text` writes one: `Summary.Value` { tag = 1, metadata = 9
/// (SummaryMetadata { plugin_data = 1 { plugin_name = 1: "text" }, data_class = 4 }), tensor = 8
/// (TensorProto { dtype = 1: DT_STRING, tensor_shape = 2: empty (a scalar), string_val = 8 }) }.
pub fn text(wall_time: f64, step: u64, tag: &str, text: &str) -> Vec<u8> {
    let plugin = Msg::default().bytes(1, b"text");
    let metadata = Msg::default().msg(1, plugin).varint(4, DATA_CLASS_TENSOR);
    let tensor = Msg::default()
        .varint(1, DT_STRING)
        .msg(2, Msg::default())
        .bytes(8, text.as_bytes());
    let value = Msg::default()
        .bytes(1, tag.as_bytes())
        .msg(9, metadata)
        .msg(8, tensor);
    event(wall_time, step)
        .msg(5, Msg::default().msg(1, value))
        .0
}

/// `Event.session_log = 7` { status = 1: START }: on a restart (any start after a run's first),
/// TensorBoard's Python loader drops what it holds at `step` and later.
pub fn session_start(wall_time: f64, step: u64) -> Vec<u8> {
    event(wall_time, step)
        .msg(7, Msg::default().varint(1, SESSION_START))
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes are worked out by hand from the protobuf encoding rules: key = field << 3 |
    // wire type, varints little-endian base 128, doubles / floats little-endian.

    #[test]
    fn scalar_event_bytes() {
        let got = scalar(1.5, 3, "a", 0.25);
        let mut want = vec![0x09];
        want.extend(1.5f64.to_le_bytes()); // 00 .. f8 3f
        want.extend([0x10, 0x03]); // step 3
        want.extend([0x2a, 0x0a]); // summary, 10 bytes
        want.extend([0x0a, 0x08]); // value, 8 bytes
        want.extend([0x0a, 0x01, b'a']); // tag
        want.extend([0x15, 0x00, 0x00, 0x80, 0x3e]); // simple_value 0.25
        assert_eq!(got, want);
    }

    #[test]
    fn file_version_is_the_24_bytes_tensorflow_writes() {
        let got = file_version(2.0);
        assert_eq!(got.len(), 24);
        assert_eq!(got[9..11], [0x1a, 13]);
        assert_eq!(&got[11..], b"brain.Event:2");
    }

    #[test]
    fn steps_above_127_take_several_varint_bytes() {
        let got = session_start(0.0, 300);
        // 300 = 0b10_0101100: 0xac 0x02; then session_log (field 7, len 2) { status: 1 }.
        assert_eq!(got[9..], [0x10, 0xac, 0x02, 0x3a, 0x02, 0x08, 0x01]);
    }

    #[test]
    fn text_event_nests_metadata_and_a_string_tensor() {
        let got = text(0.0, 0, "t", "hi");
        let value = [
            0x0a, 0x01, b't', // tag
            0x4a, 0x0a, // metadata, 10 bytes
            0x0a, 0x06, 0x0a, 0x04, b't', b'e', b'x', b't', // plugin_data { plugin_name }
            0x20, 0x02, // data_class TENSOR
            0x42, 0x08, // tensor, 8 bytes
            0x08, 0x07, // dtype DT_STRING
            0x12, 0x00, // tensor_shape {} (a scalar)
            0x42, 0x02, b'h', b'i', // string_val
        ];
        let mut want = vec![0x09];
        want.extend(0.0f64.to_le_bytes());
        want.extend([
            0x10,
            0x00,
            0x2a,
            value.len() as u8 + 2,
            0x0a,
            value.len() as u8,
        ]);
        want.extend(value);
        assert_eq!(got, want);
    }
}
