//! The attribute's pipeline, on `proc_macro2` tokens so that it can also
//! run outside the compiler (the expansion benchmark).

use crate::{check, ctxt, expand, index, parse};

/// `#[durable_fn]` on `proc_macro2` tokens: parse, check, expand. `origin`
/// is where the attribute sits, when the compiler says (the check then
/// reads the crate's sources to see past the body).
pub fn durable_fn(
    args: proc_macro2::TokenStream,
    input: proc_macro2::TokenStream,
    origin: Option<index::Origin>,
) -> proc_macro2::TokenStream {
    let f: syn::ItemFn = match syn::parse2(input.clone()) {
        Ok(f) => f,
        Err(e) => {
            let msg = syn::Error::new(e.span(), "durafn: `#[durable_fn]` goes on an `async fn name(ctx: Ctx, event: Event<T>) -> Result<R>`");
            let err = msg.to_compile_error();
            return quote::quote!(#err #input);
        }
    };
    let cx = ctxt::Ctxt::new();
    let attr = parse::attr(&cx, args);
    let sig = parse::signature(&cx, &f, attr.batching);
    let ctx_ident = sig.as_ref().and_then(|s| parse::pat_ident(s.ctx_pat));
    let params: Vec<check::Param<'_>> = f
        .sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            syn::FnArg::Typed(t) => Some((&*t.pat, &*t.ty)),
            syn::FnArg::Receiver(_) => None,
        })
        .collect();
    let scope = origin.and_then(|o| index::scope(&o, &f.sig.ident.to_string()));
    check::body(&cx, &f.block, &params, ctx_ident, scope.as_ref());
    let errors = cx.check().err().map(|e| e.to_compile_error());
    match sig {
        // The expansion compiles even when the body breaks a rule, so the
        // user sees the durafn errors, not a cascade, and editors keep
        // completing inside the function.
        Some(sig) => {
            let out = expand::expand(&f, &attr, &sig);
            quote::quote!(#errors #out)
        }
        None => quote::quote!(#errors #input),
    }
}
