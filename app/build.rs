include!("../build-support/torch_link.rs");
