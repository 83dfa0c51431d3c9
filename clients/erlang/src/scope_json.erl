%% scope_json: the small JSON encoder and decoder the Scope client needs
%% (OTP 25 has no json module and the client takes no dependencies).
%%
%% encode/1: maps (atom or binary keys), lists (arrays), binaries
%% (strings, UTF-8), integers, floats, true, false, null. Returns an iolist.
%% decode/1: a binary to the same terms; object keys are binaries, strings
%% are binaries, numbers integers or floats. Raises {invalid_json, Rest} on
%% malformed input.
-module(scope_json).

-export([encode/1, decode/1, string/1]).

encode(M) when is_map(M) ->
    Pairs = [[string(K), $:, encode(V)] || {K, V} <- lists:sort([{key(K), V} || {K, V} <- maps:to_list(M)])],
    [${, lists:join($,, Pairs), $}];
encode(L) when is_list(L) -> [$[, lists:join($,, [encode(V) || V <- L]), $]];
encode(true) -> <<"true">>;
encode(false) -> <<"false">>;
encode(null) -> <<"null">>;
encode(B) when is_binary(B) -> string(B);
encode(A) when is_atom(A) -> string(atom_to_binary(A));
encode(N) when is_integer(N) -> integer_to_binary(N);
encode(F) when is_float(F) -> float_to_binary(F, [short]).

key(K) when is_atom(K) -> atom_to_binary(K);
key(K) when is_binary(K) -> K.

%% string/1 quotes and escapes a UTF-8 binary.
string(B) -> [$", esc(B, 0, B, []), $"].

%% esc/4 copies runs of bytes that need no escaping as sub-binaries.
esc(<<>>, N, Orig, Acc) -> lists:reverse([run(Orig, N) | Acc]);
esc(<<C, R/binary>>, N, Orig, Acc) when C =:= $"; C =:= $\\; C < 16#20 ->
    Start = byte_size(Orig) - byte_size(R) - 1,
    Acc1 = [escape(C), binary:part(Orig, Start - N, N) | Acc],
    esc(R, 0, R, Acc1);
esc(<<_, R/binary>>, N, Orig, Acc) -> esc(R, N + 1, Orig, Acc).

run(Orig, N) -> binary:part(Orig, 0, N).

escape($") -> <<"\\\"">>;
escape($\\) -> <<"\\\\">>;
escape($\n) -> <<"\\n">>;
escape($\r) -> <<"\\r">>;
escape($\t) -> <<"\\t">>;
escape(C) -> io_lib:format("\\u~4.16.0b", [C]).

decode(B) when is_binary(B) ->
    {V, R} = value(ws(B)),
    case ws(R) of
        <<>> -> V;
        Rest -> error({invalid_json, Rest})
    end.

ws(<<C, R/binary>>) when C =:= $\s; C =:= $\t; C =:= $\n; C =:= $\r -> ws(R);
ws(B) -> B.

value(<<${, R/binary>>) -> object(ws(R), #{});
value(<<$[, R/binary>>) -> array(ws(R), []);
value(<<$", R/binary>>) -> str(R, []);
value(<<"true", R/binary>>) -> {true, R};
value(<<"false", R/binary>>) -> {false, R};
value(<<"null", R/binary>>) -> {null, R};
value(<<C, _/binary>> = B) when C =:= $-; C >= $0, C =< $9 -> number(B);
value(B) -> error({invalid_json, B}).

object(<<$}, R/binary>>, M) when map_size(M) =:= 0 -> {M, R};
object(<<$", R/binary>>, M) ->
    {K, R1} = str(R, []),
    case ws(R1) of
        <<$:, R2/binary>> ->
            {V, R3} = value(ws(R2)),
            M1 = M#{K => V},
            case ws(R3) of
                <<$,, R4/binary>> -> object(ws(R4), M1);
                <<$}, R4/binary>> -> {M1, R4};
                Bad -> error({invalid_json, Bad})
            end;
        Bad -> error({invalid_json, Bad})
    end;
object(B, _) -> error({invalid_json, B}).

array(<<$], R/binary>>, []) -> {[], R};
array(B, Acc) ->
    {V, R} = value(B),
    case ws(R) of
        <<$,, R1/binary>> -> array(ws(R1), [V | Acc]);
        <<$], R1/binary>> -> {lists:reverse([V | Acc]), R1};
        Bad -> error({invalid_json, Bad})
    end.

str(<<$", R/binary>>, Acc) -> {iolist_to_binary(lists:reverse(Acc)), R};
str(<<$\\, $u, H:4/binary, R/binary>>, Acc) ->
    C = binary_to_integer(H, 16),
    case {C >= 16#D800 andalso C =< 16#DBFF, R} of
        {true, <<$\\, $u, L:4/binary, R1/binary>>} ->
            Lo = binary_to_integer(L, 16),
            Cp = 16#10000 + ((C - 16#D800) bsl 10) + (Lo - 16#DC00),
            str(R1, [<<Cp/utf8>> | Acc]);
        _ -> str(R, [<<C/utf8>> | Acc])
    end;
str(<<$\\, C, R/binary>>, Acc) -> str(R, [unescape(C) | Acc]);
str(<<C, R/binary>>, Acc) when C >= 16#20 -> str(R, [C | Acc]);
str(B, _) -> error({invalid_json, B}).

unescape($") -> $";
unescape($\\) -> $\\;
unescape($/) -> $/;
unescape($b) -> $\b;
unescape($f) -> $\f;
unescape($n) -> $\n;
unescape($r) -> $\r;
unescape($t) -> $\t;
unescape(C) -> error({invalid_json, <<$\\, C>>}).

number(B) ->
    {Int, R} = digits(B, <<>>),
    case R of
        <<C, _/binary>> when C =:= $.; C =:= $e; C =:= $E ->
            {Frac, R1} = frac(R, <<>>),
            Txt = <<Int/binary, Frac/binary>>,
            %% binary_to_float needs a fraction: "1e5" -> "1.0e5".
            F = case binary:match(Txt, <<".">>) of
                    nomatch -> [M, E] = binary:split(Txt, [<<"e">>, <<"E">>]),
                               binary_to_float(<<M/binary, ".0e", E/binary>>);
                    _ -> binary_to_float(Txt)
                end,
            {F, R1};
        _ -> {binary_to_integer(Int), R}
    end.

digits(<<C, R/binary>>, Acc) when C =:= $-; C >= $0, C =< $9 -> digits(R, <<Acc/binary, C>>);
digits(R, Acc) when Acc =/= <<>>, Acc =/= <<"-">> -> {Acc, R};
digits(R, _) -> error({invalid_json, R}).

frac(<<C, R/binary>>, Acc) when C =:= $.; C =:= $e; C =:= $E; C =:= $+; C =:= $-; C >= $0, C =< $9 ->
    frac(R, <<Acc/binary, C>>);
frac(R, Acc) -> {Acc, R}.
