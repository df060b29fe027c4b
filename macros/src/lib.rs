//! Procedural macros of durafn. Use them through the `durafn` crate; the
//! user manual is on `durafn::durable_fn`.

mod check;
mod ctxt;
mod effects;
mod entry;
mod expand;
mod index;
mod parse;
mod prim;

use proc_macro::TokenStream;

/// See `durafn::durable_fn` for the manual.
#[proc_macro_attribute]
pub fn durable_fn(args: TokenStream, input: TokenStream) -> TokenStream {
    let site = proc_macro::Span::call_site();
    let origin = site.local_file().map(|file| index::Origin {
        file,
        line: site.line(),
    });
    entry::durable_fn(args.into(), input.into(), origin).into()
}
