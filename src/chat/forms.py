from __future__ import annotations

import re

from django import forms
from django.contrib.auth.forms import UserCreationForm

from chat.selectors import SEARCH_MAX_QUERY_LENGTH, search_terms


class SignupForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        fields = ("username",)


class ConversationStartForm(forms.Form):
    usernames = forms.CharField(
        max_length=2000, help_text="One or more usernames, separated by commas or spaces."
    )
    title = forms.CharField(max_length=200, required=False)

    def clean_usernames(self) -> list[str]:
        names = [n for n in re.split(r"[\s,]+", self.cleaned_data["usernames"]) if n]
        if not names:
            raise forms.ValidationError("Name at least one other user.")
        if len(names) > 50:
            raise forms.ValidationError("A conversation can have at most 50 other people.")
        return names


class PeopleAddForm(forms.Form):
    usernames = forms.CharField(
        max_length=2000, help_text="One or more usernames, separated by commas or spaces."
    )

    def clean_usernames(self) -> list[str]:
        return [n for n in re.split(r"[\s,]+", self.cleaned_data["usernames"]) if n]


class MessageSearchForm(forms.Form):
    q = forms.CharField(
        label="Search messages",
        max_length=SEARCH_MAX_QUERY_LENGTH,
        error_messages={
            "required": "Type a word to search for.",
            "max_length": "Search for at most %(limit_value)d characters (this is %(show_value)d).",
        },
    )

    def clean_q(self) -> str:
        query = self.cleaned_data["q"]
        if not search_terms(query):
            raise forms.ValidationError("Search for at least one word (letters or digits).")
        return query
